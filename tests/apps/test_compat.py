import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from vigil.apps.broker import ensure_topics
from vigil.apps.compat import verified_end_offsets

pytestmark = pytest.mark.integration


def test_end_offsets_are_verified_by_fetching_past_the_reported_end(bootstrap):
    topic = f"endoff-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 2})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for n in (1, 3, 5):  # three produce batches on partition 0: 0 | 1..3 | 4..8
        for i in range(n):
            producer.produce(topic, f"v{i}".encode(), partition=0)
        producer.flush(10)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "endoff"})
    _low, reported = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    reader.close()
    # Whatever the broker reports (Tansu 0.6.0: 5), the verified end is the truth.
    got = verified_end_offsets(bootstrap, {(topic, 0): reported, (topic, 1): 0})
    assert got == {(topic, 0): 9, (topic, 1): 0}


def test_the_table_manager_override_still_matches_upstream():
    """PromptTableManager replaces faust's TableManager.on_start minus its 1 s pause: if
    faust changes that method, this fails and the override needs another look."""
    import inspect

    from faust.tables import TableManager

    from vigil.apps.worker import PromptTableManager

    upstream = inspect.getsource(TableManager.on_start)
    assert "await self.sleep(1.0)" in upstream
    body = [ln.strip() for ln in upstream.splitlines()[2:] if ln.strip()]
    ours = [ln.strip() for ln in inspect.getsource(PromptTableManager.on_start).splitlines()[1:]]
    assert [ln for ln in body if ln != "await self.sleep(1.0)"] == [ln for ln in ours if ln]
