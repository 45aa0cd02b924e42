"""Risk worker: a faust app wiring ``vigil.transactions`` through the risk pipeline.

Per micro-batch: decode + features + rules + model (streams.pipeline), produce scores,
alerts and dead letters, wait until the broker has them, then write per-account feature
state to the faust table's changelog (and the table's store), wait until the broker has
that too, hand it with its changelog offsets to the store's local files (apps/store.py),
and only then acknowledge the batch (faust commits acknowledged offsets). A
crash at any point redelivers events and never loses one; the pipeline's per-account
offsets make redelivery harmless.

Design notes:
- The table is co-partitioned with the source topic (same key, same partition count): a
  worker that owns transactions partition p also owns state partition p, and recovers it
  on rebalance: from its local file, then the changelog's records after the file's offset.
- Outputs and the changelog go through a confluent-kafka producer (librdkafka): ~20x
  cheaper per message than faust's own ``Topic.send`` on this hot path. The changelog
  records are what faust would write (key raw, value in the table's codec, partition =
  the source partition), so its recovery reads them back as its own.
- No Kafka transactions (Tansu has no EndTxn): at-least-once with deterministic ids.
- Tansu under-reports end offsets (faust's table recovery skipped changelog records) and
  does not end a long-poll fetch early when data arrives: both adapted in apps/transport.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import faust
from faust.serializers import codecs

from vigil.apps.batching import linger_batches
from vigil.apps.broker import (
    check_copartitioned,
    check_record_limit,
    ensure_all,
    resolve_bootstrap,
)
from vigil.apps.follower import ModelFollower
from vigil.apps.rules_follower import RatesFollower, RulesFollower
from vigil.apps.settings import Settings
from vigil.apps.store import Store as TableStore
from vigil.apps.worker import Outputs, Watch, exit_on_error, faust_app, raw_records, run_app
from vigil.models.kinds import RISK
from vigil.models.registry import Limits
from vigil.models.serving import ModelError
from vigil.streams.currency import load_rates
from vigil.streams.features import FEATURE_SPEC
from vigil.streams.features.library import DAY_MS
from vigil.streams.partitioning import partition_for
from vigil.streams.pipeline import RULE_NAMES, BatchResult, IdleSweep, RiskPipeline, now_ms
from vigil.streams.rules import Thresholds, load_ruleset
from vigil.streams.scorers import BatchScorer

__all__ = ["create_app", "run_worker"]

log = logging.getLogger("vigil.risk")
STATS_EVERY_S = 10.0
CATCH_UP_S = 15.0  # longest the first batch waits for the control topics' backlog


def create_app(settings: Settings, bootstrap: str | None = None) -> faust.App:
    bootstrap = bootstrap or resolve_bootstrap(settings)
    topics = settings.topics
    ensure_all(bootstrap, topics, settings.partitions, settings.replication_factor)
    # the topics' real partition count wins over settings (they may predate this worker)
    partitions = check_copartitioned(
        bootstrap, [topics.transactions, topics.inflows, topics.labels]
    )
    outputs_to = [topics.scores, topics.alerts, topics.dlq, topics.inflows]
    check_record_limit(bootstrap, outputs_to, settings.max_record_bytes)
    app = faust_app(settings, bootstrap, "risk", partitions, settings.batch_size)
    # One stream over transactions, the internal records this worker group republishes
    # keyed by payee (streams.features.inflows, .payee) and the labels: co-partitioned, so
    # partition p of each goes to the same worker, which keeps the payer, payee and label
    # sides of an id in one state entry. Labels are keyed by transaction: whichever worker
    # reads one routes it to its account's and its counterparty's partitions.
    source = app.topic(
        topics.transactions,
        topics.inflows,
        topics.labels,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    state = app.Table(
        "account-features",
        partitions=partitions,
        key_type=bytes,  # raw account id; values: the JSON state snapshot
    )
    ruleset = (
        None if settings.ruleset_path is None else load_ruleset(settings.ruleset_path, RULE_NAMES)
    )
    pipeline = RiskPipeline(
        ruleset=ruleset,
        thresholds=Thresholds(settings.review_threshold, settings.block_threshold),
        inflow_topic=topics.inflows,
        labels_topic=topics.labels,
        partitions=partitions,
        max_record_bytes=settings.max_record_bytes,
        rates=None if settings.rates_path is None else load_rates(settings.rates_path),
        reporting_currency=settings.reporting_currency,
    )

    def model_on_disk() -> BatchScorer | None:
        """The newest model under the models path: loaded in the model follower's thread
        while the worker starts and joins its group (about 1 s of imports and ONNX Runtime
        sessions off a restart's path)."""
        try:
            model = RISK.load_latest(settings.models_path)
        except ModelError as exc:
            log.error("model refused: %s; scoring with rules only", exc)
            return None
        if model is None:
            log.info("no model under %s: scoring with rules only", settings.models_path)
        else:
            log.info("model %s loaded from %s", model.version, settings.models_path)
        return model

    log.info(
        "ruleset %s version %s (%d rules); feature spec %s (%d features); rates table %s "
        "(%d currencies in %s)",
        pipeline.ruleset.name,
        pipeline.ruleset.version,
        len(pipeline.ruleset.rules),
        FEATURE_SPEC.label,
        len(FEATURE_SPEC.names),
        pipeline.rates.label,
        len(pipeline.rates.rates),
        pipeline.rates.base,
    )
    outputs = Outputs(bootstrap, settings.max_record_bytes)
    # the changelog's own producer: its delivery reports give the offsets the table's store
    # keeps beside the rows (apps/store.py)
    state_out = Outputs(bootstrap, settings.max_record_bytes, offsets=True)

    def rejected(_reason: str) -> None:
        pipeline.counters["ruleset_rejected"] += 1

    def rates_rejected(_reason: str) -> None:
        pipeline.counters["rates_rejected"] += 1

    def check_spec(spec: dict) -> None:
        RISK.check(spec, "the release")  # the input spec names its feature spec

    models = ModelFollower(
        bootstrap,
        topics.models,
        "risk",
        settings.release_trusted(),
        check_spec,
        # ModelHolder.swap is atomic: the next micro-batch reads the new model
        install=lambda scorer, _release: pipeline.model.swap(scorer),
        serving=lambda: pipeline.model.current.version,
        counters=pipeline.counters,
        limits=Limits(release_bytes=settings.max_release_bytes),
        initial=model_on_disk,
        serve_demo=settings.serve_demo_models,
    )
    followers = (
        RulesFollower(bootstrap, topics.rules, RULE_NAMES, pipeline.set_ruleset, rejected),
        RatesFollower(bootstrap, topics.rates, pipeline.set_rates, rates_rejected),
        models,
    )

    @app.at_start  # while the worker joins its group: the model on disk loads meanwhile
    def follow_rules_and_models() -> None:
        for follower in followers:
            follower.start()

    @app.on_before_shutdown.connect
    async def stop_following(*_args: Any, **_kwargs: Any) -> None:
        for follower in followers:
            follower.stop()

    # The table's changelog goes through our producer too (faust's send per record was
    # ~15 % of this worker's CPU); faust reads it back on recovery as its own.
    changelog = state.changelog_topic.get_topic_name()
    store = state.data if isinstance(state.data, TableStore) else None  # None: memory only

    async def write_state(rows: dict[int, dict[bytes, bytes | None]]) -> None:
        """Account states (None: forgotten) to the changelog, by partition; once the broker
        has them, to the store's files with the offsets they landed at."""
        state_out.produce_rows(changelog, rows)
        await state_out.flush()
        if store is not None:
            store.persist(rows, {p: state_out.offsets[(changelog, p)] for p in rows})

    def load_state(account_id: str) -> dict[str, Any] | None:
        # the store's own dict, as ``save`` writes it (faust's table reads go through
        # Mapping.get, a KeyError for every id not seen yet, and the table's get hooks)
        return state.data.data.get(account_id.encode())

    phases: Counter[str] = Counter()  # seconds per phase of the batch loop, and batches
    scoring: list[bool] = []  # set once the first batch may be scored (see caught_up)

    def ready() -> tuple[bool, str]:
        """``/readyz``: scoring, with partitions of the transactions topic assigned."""
        if not scoring:
            return False, "loading the model and catching up with the control topics"
        mine = sorted(owned())
        if not mine:
            return False, f"no partition of {topics.transactions} assigned to this worker"
        return True, (
            f"ready: partitions {mine} of {topics.transactions}; model "
            f"{pipeline.model.current.version}, ruleset {pipeline.ruleset.label}"
        )

    watch = Watch(
        app,
        "risk",
        settings,
        settings.risk_metrics_port,
        pipeline.counters,
        ready,
        info=lambda: {
            "model": {"version": pipeline.model.current.version},
            "ruleset": {"version": pipeline.ruleset.label},
            "shadow_ruleset": {"version": pipeline.shadow.label if pipeline.shadow else "-"},
            "rates": {"version": pipeline.rates.label},
            "feature_spec": {"version": FEATURE_SPEC.label},
        },
        lag_topics=[topics.transactions, topics.inflows, topics.labels],
        latency_topics=[topics.transactions],
    )

    def save(result: BatchResult, saved: dict[str, tuple[int, dict[str, Any]]]) -> None:
        """Put a result's account states in the table's store (the next part of a batch
        reads them there); ``saved`` collects them for the changelog."""
        rows = state.data.data  # the store's dict (see load_state)
        for account_id, partition in result.partition.items():
            account = result.states[account_id]
            snapshot = account.snapshot()
            rows[account_id.encode()] = snapshot
            pipeline.remember(account_id, snapshot, account)
            saved[account_id] = (partition, snapshot)

    def owned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.transactions}

    async def handle(stream: faust.StreamT, events: list[faust.EventT]) -> None:
        consumed_ms = now_ms()
        if partitions > 1:  # a counterparty's state is read where its partition is owned
            mine = owned()
            pipeline.payee_here = lambda cp: partition_for(cp.encode(), partitions) in mine
        records = raw_records(events)
        t0 = time.perf_counter()
        saved: dict[str, tuple[int, dict[str, Any]]] = {}  # account -> (partition, snapshot)
        produce_s = 0.0
        failed = 0
        # one result, or where anything raised, one per part, the failing records
        # dead-lettered (streams.pipeline): each part's states are stored before the next
        for result in pipeline.process_isolated(records, load_state, consumed_ms):
            failed += result.failed
            t = time.perf_counter()
            outputs.produce(topics.scores, result.scores)
            outputs.produce(topics.alerts, result.alerts)
            outputs.produce(topics.dlq, result.dead)
            outputs.produce_to(topics.inflows, result.inflows)
            produce_s += time.perf_counter() - t
            save(result, saved)
        if failed:
            log.error(
                "%d of %d records dead-lettered: processing them raised", failed, len(records)
            )
        t2 = time.perf_counter()
        await outputs.flush()  # outputs durable before state: see module notes
        t3 = time.perf_counter()
        rows: dict[int, dict[bytes, bytes | None]] = {}
        for account_id, (partition, snapshot) in saved.items():
            # changelog partition = the source partition (co-partitioned)
            value = codecs.dumps(state.value_serializer, snapshot)
            rows.setdefault(partition, {})[account_id.encode()] = value
        # the state durable before the source offsets: a failed flush ends the process,
        # taking the in-memory state with it, before any event of the batch is acked
        await write_state(rows)
        t4 = time.perf_counter()
        watch.batch(events, t4 - t0)
        for ev in events:
            await stream.ack(ev)
        spent = phases
        spent["pipeline"] += t2 - t0 - produce_s
        spent["produce"] += produce_s
        spent["flush"] += t3 - t2
        spent["save"] += t4 - t3
        spent["ack"] += time.perf_counter() - t4
        spent["batches"] += 1
        if spent["batches"] == 1:  # how a (re)start went, in one line
            log.info(
                "first batch: %d events (%d already applied before a restart), handled in "
                "%.2f s: pipeline %.2f, outputs %.2f, state %.2f",
                len(events),
                pipeline.counters["redelivered"],
                time.perf_counter() - t0,
                t2 - t0,
                t3 - t2,
                t4 - t3,
            )

    sweep = IdleSweep(int(settings.state_ttl_days * DAY_MS))

    async def forget_idle() -> None:
        """Forget idle account states of the partitions this worker owns: out of the
        table's store, and a tombstone on its changelog, so recovery forgets them too."""
        mine = owned()
        keys = sweep.due(state.data, pipeline.watermark_ms)
        tombstones: dict[int, dict[bytes, bytes | None]] = {}
        for key in keys:
            partition = partition_for(key, partitions)
            if partition not in mine:
                continue  # another worker's now: its own sweep decides
            state.data.pop(key, None)
            pipeline.forget(key.decode())
            tombstones.setdefault(partition, {})[key] = None
        if tombstones:
            await write_state(tombstones)
            forgotten = sum(len(part) for part in tombstones.values())
            pipeline.counters["forgotten"] += forgotten
            log.info("forgot %d idle account states (%d kept)", forgotten, len(state.data))

    async def caught_up() -> None:
        """Before the first batch: the model on disk is loaded (however long it takes: no
        transaction is scored without the model meant for it), and the newest ruleset and
        model release on the control topics are in force (a restarted worker would
        otherwise score its first batches with what it loaded from disk)."""
        while not await asyncio.to_thread(models.loaded.wait, CATCH_UP_S):
            log.warning("still loading the model under %s", settings.models_path)
        for follower in followers:
            done = await asyncio.to_thread(follower.caught_up.wait, CATCH_UP_S)
            if not done:
                log.warning(
                    "%s not caught up after %.0f s: scoring with what serves now",
                    follower.topic,
                    CATCH_UP_S,
                )

    @app.agent(source)
    async def score(stream: faust.StreamT) -> None:
        within_s = settings.batch_wait_ms / 1000
        loop = asyncio.get_running_loop()
        await caught_up()
        scoring.append(True)
        log.info(
            "scoring with model %s and ruleset %s",
            pipeline.model.current.version,
            pipeline.ruleset.label,
        )
        sweep_at = loop.time() + settings.state_sweep_s
        # we ack a batch only once it is fully handled (faust's take_events acks in a
        # `finally`, so a worker stopped mid-batch would commit events whose state was never
        # saved); the linger counts from a batch's first event (apps/batching.py)
        async for events in linger_batches(stream, settings.batch_size, within_s):
            # records that raise are isolated in the pipeline; this is for the rest
            async with exit_on_error(len(events)):
                await handle(stream, events)
            if loop.time() >= sweep_at:  # between batches: no batch is half-saved now
                sweep_at = loop.time() + settings.state_sweep_s
                await forget_idle()

    @app.timer(STATS_EVERY_S)
    async def report() -> None:
        c = pipeline.counters
        log.info(
            "events=%d scored=%d alerts=%d dlq=%d redelivered=%d inflows=%d payments=%d "
            "labels=%d labels_folded=%d labels_unrouted=%d misrouted=%d model=%s "
            "rules=%s shadow=%s ruleset_swaps=%d ruleset_rejected=%d model_swaps=%d "
            "model_refused=%d rates=%s rates_swaps=%d rates_rejected=%d",
            c["events"],
            c["scored"],
            c["alerts"],
            c["dlq"],
            c["redelivered"],
            c["inflows"],
            c["payments_folded"],
            c["labels"],
            c["labels_folded"],
            c["labels_unrouted"],
            c["misrouted"],
            pipeline.model.current.version,
            pipeline.ruleset.label,
            pipeline.shadow.label if pipeline.shadow else "-",
            c["ruleset_swaps"],
            c["ruleset_rejected"],
            c["model_swaps"],
            c["model_refused"],
            pipeline.rates.label,
            c["rates_swaps"],
            c["rates_rejected"],
        )
        if phases["batches"]:
            log.info(
                "batches=%d seconds: %s",
                phases["batches"],
                " ".join(f"{k}={v:.2f}" for k, v in phases.items() if k != "batches"),
            )

    app.pipeline = pipeline  # type: ignore[attr-defined]  # for in-process inspection
    return app


def run_worker(settings: Settings) -> None:
    """Run the risk worker until SIGINT/SIGTERM."""
    run_app(create_app(settings), settings)
