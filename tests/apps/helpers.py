"""Integration helpers: bounded waits on result topics (no timing assertions)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vigil.apps.clients import read_topic


def collect(
    bootstrap: str,
    topic: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 120.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[dict[str, Any]]:
    """Read ``topic`` from the start until ``done(records)`` or the timeout; returns all."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    for _key, value, _ts in read_topic(
        bootstrap,
        topic,
        follow=True,
        idle_timeout_s=0.3,
        should_stop=lambda: done(got) or time.monotonic() > deadline or not alive(),
    ):
        got.append(value if isinstance(value, dict) else {"raw": value})
    return got


def wait_for_log(
    path: Path, pattern: str, alive: Callable[[], bool], timeout_s: float = 60.0
) -> re.Match | None:
    """The first match of ``pattern`` in a worker's log, once it is written (None: not
    within the timeout, or the worker died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.2)
    return None


def where_missing(bootstrap: str, topic: str, group: str, seen: set[str]) -> str:
    """Diagnosis for a failed run: committed offsets, ends, and where unscored events are."""
    import json
    from collections import defaultdict

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    meta = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = sorted(meta.list_topics(topic, timeout=10).topics[topic].partitions)
    tps = [TopicPartition(topic, p) for p in parts]
    committed = {t.partition: t.offset for t in meta.committed(tps, timeout=10)}
    ends = {p: meta.get_watermark_offsets(TopicPartition(topic, p), timeout=5) for p in parts}
    meta.close()
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group + "-diag", "enable.partition.eof": True}
    )
    reader.assign([TopicPartition(topic, p, 0) for p in parts])
    missing: dict[int, list[int]] = defaultdict(list)
    eof: set[int] = set()
    while len(eof) < len(parts):
        for m in reader.consume(1000, 1.0):
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            try:
                tx_id = json.loads(m.value())["tx_id"]
            except (ValueError, KeyError, TypeError):
                continue
            if tx_id not in seen:
                missing[m.partition()].append(m.offset())
    reader.close()
    return (
        f"committed={committed} watermarks={ends} "
        f"unscored={ {p: (len(o), o[:3], o[-3:]) for p, o in missing.items()} }"
    )


FAULTS = Path(__file__).parent / "faults"


def with_faults(env: dict[str, str], faults: dict[str, str] | None) -> dict[str, str]:
    """A worker environment with fault injection (tests/apps/faults/sitecustomize.py)."""
    return env if not faults else env | {"PYTHONPATH": str(FAULTS), **faults}


def get(port: int, path: str) -> tuple[int, str]:
    """A worker's HTTP endpoint on this host: (status, body); (0, "") while none answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""  # not serving yet


def series(port: int) -> dict[tuple[str, tuple], float]:
    """A worker's /metrics as {(sample name, sorted labels): value}."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
