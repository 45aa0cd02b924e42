import pytest
from confluent_kafka.admin import AdminClient

from vigil.apps.broker import BrokerError, EmbeddedBroker, ensure_topics, resolve_bootstrap
from vigil.apps.settings import Settings
from vigil.streams.topics import CONTRACT_TOPICS

pytestmark = pytest.mark.integration


def test_contract_topics_exist_with_their_partitions(settings, bootstrap):
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    for spec in CONTRACT_TOPICS:
        name = f"{settings.namespace}.{spec.suffix}"
        assert name in meta, name
        assert len(meta[name].partitions) == (4 if spec.partitioned else 1)
    assert ensure_topics(bootstrap, settings.topics.all(4)) == []  # idempotent


def test_embedded_broker_starts_and_stops_cleanly(tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "b.log").start()
    pid = broker.pid
    assert broker.running and ensure_topics(broker.bootstrap, {"x": 2}) == ["x"]
    broker.stop()
    assert not broker.running
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_without_a_broker_the_error_says_what_to_do(tmp_path):
    with pytest.raises(BrokerError, match="vigil broker.*VIGIL_KAFKA_BOOTSTRAP"):
        resolve_bootstrap(Settings(kafka_bootstrap=None, state_dir=tmp_path))
    assert resolve_bootstrap(Settings(kafka_bootstrap="h:1", state_dir=tmp_path)) == "h:1"


def test_our_partitioner_places_keys_where_the_kafka_producer_does(settings, bootstrap):
    # the inflow repartition relies on it: payee X's inflows must land on X's partition
    from vigil.apps.kafka import make_producer
    from vigil.streams.partitioning import partition_for

    topic = settings.topics.transactions
    keys = [f"acc-{i:06d}".encode() for i in range(300)] + [b"", b"a", "zü-ř".encode()]
    placed: dict[bytes, int] = {}
    producer = make_producer(bootstrap)
    for key in keys:
        producer.produce(
            topic, b"{}", key, on_delivery=lambda _e, m: placed.__setitem__(m.key(), m.partition())
        )
    assert producer.flush(10) == 0
    assert {k: partition_for(k, 4) for k in keys} == placed
    assert len(set(placed.values())) == 4


def test_topics_with_different_partition_counts_are_refused_as_copartitioned(bootstrap):
    from vigil.apps.broker import check_copartitioned

    ensure_topics(bootstrap, {"cp-a": 4, "cp-b": 2})
    assert check_copartitioned(bootstrap, ["cp-a", "cp-a"]) == 4
    with pytest.raises(BrokerError, match=r"same partition count.*cp-a: 4, cp-b: 2"):
        check_copartitioned(bootstrap, ["cp-a", "cp-b"])


def test_every_topic_is_created_with_the_configured_replication_factor(
    bootstrap, namespace, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from vigil.apps.cli import app
    from vigil.apps.worker import faust_app

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_REPLICATION_FACTOR", "3")  # Tansu records what it is asked
    runner = CliRunner()
    for ns, args, want in [(namespace, [], 3), (f"{namespace}-b", ["--replication", "2"], 2)]:
        monkeypatch.setenv("VIGIL_NAMESPACE", ns)
        made = runner.invoke(app, ["topics", *args])
        assert made.exit_code == 0, made.output
        settings = Settings()
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        names = set(settings.topics.all(settings.partitions))
        assert names <= set(topics)
        replicas = {len(p.replicas) for n in names for p in topics[n].partitions.values()}
        assert replicas == {want}, (ns, replicas)
    # and the topics faust itself would create (changelogs, when missing)
    assert faust_app(Settings(), bootstrap, "risk", 4, 10).conf.topic_replication_factor == 3
