"""The workers' output path (apps.worker.Outputs) on the embedded broker: it reports
delivery failures only, and a batch the broker refused ends the process without committing
(exit 75), so the batch is redelivered, never dropped."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from vigil.apps.broker import ensure_topics
from vigil.apps.kafka import make_reader, read_from_start
from vigil.apps.worker import EXIT_OUTPUT_LOST


def _run(bootstrap: str, body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import asyncio
        from vigil.apps.worker import Outputs
        outputs = Outputs({bootstrap!r})
        {body}
        asyncio.run(outputs.flush())
        print("flushed")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_flush_returns_once_the_broker_has_every_record(bootstrap, namespace):
    topic = f"{namespace}-outputs"
    ensure_topics(bootstrap, {topic: 2})
    body = f"outputs.produce({topic!r}, [(str(i).encode(), b'v%d' % i) for i in range(500)])"
    done = _run(bootstrap, body)
    assert done.returncode == 0 and "flushed" in done.stdout, done.stderr
    reader = make_reader(bootstrap)
    read_from_start(reader, topic)
    got = []
    while len(got) < 500 and (msgs := reader.consume(500, timeout=5)):
        got += [m.value() for m in msgs if m.error() is None]
    reader.close()
    assert sorted(got) == sorted(b"v%d" % i for i in range(500))


def test_with_offsets_each_partition_reports_where_its_newest_record_landed(bootstrap, namespace):
    # the table store keeps these offsets beside the rows: they must be the broker's own
    from vigil.apps.worker import Outputs

    topic = f"{namespace}-outputs-offsets"
    ensure_topics(bootstrap, {topic: 3})
    outputs = Outputs(bootstrap, offsets=True)
    for n in (40, 25):  # two batches: the newest offset moves on
        outputs.produce_rows(topic, {p: {b"k%d-%d" % (p, i): b"v" for i in range(n + p)}
                                     for p in range(3)})  # fmt: skip
        asyncio.run(outputs.flush())
    reader = make_reader(bootstrap)
    read_from_start(reader, topic)
    newest: dict[int, int] = {}
    while newest != {0: 64, 1: 66, 2: 68} and (msgs := reader.consume(500, timeout=5)):
        for m in msgs:
            if m.error() is None:
                newest[m.partition()] = max(newest.get(m.partition(), -1), m.offset())
    reader.close()
    assert newest == {0: 64, 1: 66, 2: 68}  # 40 + 25 records (+ p) from offset 0
    assert {p: o for (t, p), o in outputs.offsets.items() if t == topic} == newest


def test_a_refused_record_ends_the_process_without_returning(bootstrap, namespace):
    topic = f"{namespace}-outputs-refused"
    ensure_topics(bootstrap, {topic: 2})
    # partition 7 of a 2-partition topic: librdkafka's delivery report fails it
    body = f"outputs.produce_to({topic!r}, [(0, b'fine'), (7, b'nowhere')])"
    refused = _run(bootstrap, body)
    assert refused.returncode == EXIT_OUTPUT_LOST, refused.stderr
    assert "flushed" not in refused.stdout and "broker refused 1 output records" in refused.stderr


def test_topics_that_take_smaller_records_than_the_workers_make_are_named():
    from vigil.apps.broker import record_limit_problems

    problems = record_limit_problems(
        {"vigil.dlq": 1_048_588, "vigil.risk.scores": 500_000, "vigil.risk.alerts": None},
        max_record_bytes=1_000_000,
    )
    assert len(problems) == 1 and problems[0].startswith("vigil.risk.scores takes records")
    assert "VIGIL_MAX_RECORD_BYTES" in problems[0]
    assert record_limit_problems({"t": 1_000_511}, 1_000_000) != []  # framing counts
    assert record_limit_problems({"t": 1_000_512}, 1_000_000) == []


@pytest.mark.integration
def test_the_embedded_broker_reports_no_limit_and_the_check_passes(settings, bootstrap):
    from vigil.apps.broker import check_record_limit

    topics = settings.topics
    check_record_limit(bootstrap, [topics.scores, topics.dlq], settings.max_record_bytes)


def test_an_error_escaping_a_batch_ends_the_process_with_exit_70_not_a_silent_restart():
    code = textwrap.dedent(
        """
        import asyncio
        from vigil.apps.worker import exit_on_error

        async def batch():
            async with exit_on_error(3):
                raise KeyError("a bug outside the per-record isolation")
            print("went on")

        asyncio.run(batch())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 70 and "went on" not in done.stdout
    assert "a batch of 3 events could not be handled" in done.stderr
    assert "KeyError" in done.stderr  # with its traceback
