"""Vigil's faust transport (apps/transport.py): found by faust through its registry, built
only from subclasses, and checked against the upstream methods it overrides."""

import asyncio
import inspect
import uuid

import faust
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.transport import by_url
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP
from mode.services import Service

from vigil.apps import transport
from vigil.apps.broker import ensure_topics
from vigil.apps.settings import Settings
from vigil.apps.transport import verified_end_offsets
from vigil.apps.worker import faust_app

# upstream (class, method) -> its parameters, as Vigil's override was written against them
# (faust-streaming 0.15.3, mode-streaming 0.4): a change upstream fails here first
OVERRIDDEN = {
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"): ["self", "transport"],
    (faust_aiokafka.AIOKafkaConsumerThread, "_highwaters"): ["self", "partitions"],
    (faust_aiokafka.Consumer, "_new_consumer_thread"): ["self"],
    (faust_consumer.Consumer, "resume_partitions"): ["self", "tps"],
    (faust_consumer.Consumer, "perform_seek"): ["self"],
    (faust_consumer.Consumer, "_wait_next_records"): ["self", "timeout"],
    (Service, "wait_first"): ["self", "coros", "timeout"],
    (faust.App, "on_init_dependencies"): ["self"],
}
USED = {  # upstream names the overrides call
    (faust_consumer.Consumer, "_is_changelog_tp"): ["self", "tp"],
    (faust_consumer.Consumer, "_get_active_partitions"): ["self"],
    (faust_consumer.Consumer, "_getmany"): ["self", "active_partitions", "timeout"],
    (faust_consumer.Consumer, "_seek"): ["self", "partition", "offset"],
    (faust_consumer.Consumer, "assignment"): ["self"],
}


@pytest.mark.parametrize("where", [*OVERRIDDEN, *USED], ids=lambda w: f"{w[0].__name__}.{w[1]}")
def test_the_upstream_methods_we_extend_keep_their_signature(where):
    cls, name = where
    expected = {**OVERRIDDEN, **USED}[where]
    assert list(inspect.signature(getattr(cls, name)).parameters) == expected


def test_every_override_has_an_upstream_method_to_extend():
    ours = {
        transport.ConsumerThread: faust_aiokafka.AIOKafkaConsumerThread,
        transport.Consumer: faust_aiokafka.Consumer,
    }
    for cls, base in ours.items():
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("__"):
                assert hasattr(base, name), f"{cls.__name__}.{name} overrides nothing upstream"
                assert (base, name) in OVERRIDDEN or any(
                    (b, name) in OVERRIDDEN for b in base.__mro__
                ), f"{cls.__name__}.{name} is not listed in OVERRIDDEN"


def test_faust_finds_the_transport_by_scheme_and_its_own_classes_stay_as_they_were(tmp_path):
    assert by_url(f"{transport.SCHEME}://127.0.0.1:9092") is transport.Transport
    upstream = {
        name: getattr(faust_consumer.Consumer, name)
        for name in ("resume_partitions", "perform_seek", "_wait_next_records", "wait_first")
    }
    settings = Settings(namespace="transport", state_dir=tmp_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the apps' consumers bind to it; closed below
    try:
        app = faust_app(settings, "127.0.0.1:1", "risk", partitions=1, batch_size=10)
        assert type(app.consumer) is transport.Consumer  # a worker gets Vigil's consumer ...
        for name, method in upstream.items():  # ... and faust's classes are untouched
            assert getattr(faust_consumer.Consumer, name) is method
        plain = faust.App("plain", broker="kafka://127.0.0.1:1", web_enabled=False)
        assert type(plain.consumer) is faust_aiokafka.Consumer
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_worker_app_starts_without_faust_s_per_event_monitor(tmp_path):
    settings = Settings(namespace="transport", state_dir=tmp_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = faust_app(settings, "127.0.0.1:1", "risk", partitions=1, batch_size=10)
        started = list(app.on_init_dependencies())  # what faust starts with the app
        assert app.monitor not in list(app.sensors) and app.monitor not in started
        assert any(s is app.consumer for s in started)  # the rest as faust has them
        plain = faust.App("plain", broker="kafka://127.0.0.1:1", web_enabled=False)
        plain.on_init_dependencies()
        assert plain.monitor in list(plain.sensors)  # what the override takes away
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.integration
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


def test_the_fetcher_looks_again_soon_not_after_a_second(tmp_path):
    # faust's own loop sleeps 1 s there (asserted on its source, so a change upstream shows)
    assert "await self.sleep(1)" in inspect.getsource(faust_consumer.Consumer._wait_next_records)
    settings = Settings(namespace="transport", state_dir=tmp_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        consumer = faust_app(settings, "127.0.0.1:1", "risk", partitions=1, batch_size=10).consumer
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        consumer.sleep = sleep  # type: ignore[method-assign]  # the delay, not the clock
        assert consumer._get_active_partitions() == set()  # nothing assigned yet
        got = loop.run_until_complete(consumer._wait_next_records(timeout=5.0))
        assert got == ({}, set()) and slept == [transport.NO_PARTITIONS_POLL_S]
        assert transport.NO_PARTITIONS_POLL_S < 0.1

        # with partitions active, a fetch waits for their records at most the cap, so
        # partitions resumed meanwhile are fetched soon
        waited: list[float] = []

        async def getmany(active_partitions, timeout):  # noqa: ANN001, ANN202
            waited.append(timeout)
            return {}

        consumer._getmany = getmany  # type: ignore[method-assign]
        consumer._active_partitions = {TP("t", 0)}
        loop.run_until_complete(consumer._wait_next_records(timeout=1.0))
        assert waited == [transport.FETCH_WAIT_CAP_S] and transport.FETCH_WAIT_CAP_S <= 0.1
    finally:
        asyncio.set_event_loop(None)
        loop.close()


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
