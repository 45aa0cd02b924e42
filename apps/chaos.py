"""``vigil chaos``: the fault suite, run against a local stack (the embedded broker, or the
cluster ``VIGIL_KAFKA_BOOTSTRAP`` names) with real worker processes. Each experiment runs
in a namespace of its own and counts what happened to every record:

- ``kills``: SIGKILLs of the risk worker while transactions stream in; every transaction
  scored, none twice with different results, alerts as an undisturbed in-process run
  decides them, features equal to that run's, and the time from each restart to scoring;
- ``fuzz``: hostile records of every kind in ``streams.sources.hostile`` among ordinary
  ones; each must be scored with a valid score or dead-lettered, and the worker live;
- ``rules``: rule-document bombs on the rules topic; each refused, the worker scoring and
  still following (a valid ruleset published after them is applied);
- ``releases``: forged, unsigned, tampered, truncated, replayed, downgraded, oversized and
  garbage releases on the models topic; each refused and the serving model unchanged;
- ``soak``: a steady rate for minutes; worker RSS and latency per minute.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from vigil.apps.bench import percentile, scratch_namespace
from vigil.apps.clients import Pacer, read_messages
from vigil.apps.kafka import make_producer
from vigil.apps.process import WorkerProcess
from vigil.apps.settings import Settings
from vigil.streams.pipeline import now_ms
from vigil.streams.schemas import ScoreRecord
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

__all__ = ["ChaosConfig", "run_chaos"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class ChaosConfig:
    events: int = 50_000  # transactions of the kills experiment
    rate: float = 2_000.0  # their publishing rate (per second)
    kills: int = 10
    fuzz: int = 0  # hostile records (0: experiment off)
    rules: bool = False
    releases: bool = False
    soak_minutes: float = 0.0
    soak_rate: float = 3_000.0
    seed: int = 7
    idle_timeout_s: float = 120.0  # no new score this long: give up waiting


# ------------------------------------------------------------------ processes and topics


class Worker:
    """A risk worker process that can be killed and restarted; counts its starts and
    samples its resident memory."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process: WorkerProcess | None = None
        self.started_ms: list[int] = []

    def start(self) -> None:
        self.started_ms.append(now_ms())
        self.process = WorkerProcess("risk", self.env, self.log_path).start()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def rss_mb(self) -> float | None:
        pid = self.process.pid if self.process else None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, TypeError):
            return None
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return round(kb / 1024, 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Follower(threading.Thread):
    """Reads a topic from its start until stopped, handing each message to ``on``."""

    def __init__(self, bootstrap: str, topic: str, on: Callable[[Message], None]) -> None:
        super().__init__(daemon=True, name=f"chaos-{topic}")
        self.bootstrap, self.topic, self.on = bootstrap, topic, on
        self.stopping = threading.Event()
        self.count = 0
        self.last_s = time.monotonic()

    def run(self) -> None:
        for msg in read_messages(
            self.bootstrap,
            self.topic,
            follow=True,
            idle_timeout_s=0.2,
            should_stop=self.stopping.is_set,
        ):
            self.count += 1
            self.last_s = time.monotonic()
            self.on(msg)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def _following(bootstrap: str, **lists: list[dict[str, Any]]) -> list[Follower]:
    """Started followers, one per topic: ``scores=...`` fills that list with the decoded
    records of the namespace's scores topic as they arrive (a topic name per keyword)."""
    followers = []
    for topic, into in lists.items():
        follower = Follower(bootstrap, topic, lambda m, into=into: into.append(_json(m)))
        follower.start()
        followers.append(follower)
    return followers


def _json(msg: Message) -> dict[str, Any]:
    try:
        value = json.loads(msg.value() or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def produce_all(
    producer: Producer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list | None]],
    rate: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[tuple[int, int] | None]:
    """Publish in order at ``rate``; returns each record's (partition, offset), None where
    the broker refused it."""
    coords: list[tuple[int, int] | None] = []
    pacer = Pacer(rate)
    for i, (key, value, headers) in enumerate(records):
        if should_stop():
            break
        coords.append(None)

        def delivered(err: KafkaError | None, msg: Message, i: int = i) -> None:
            if err is None:
                coords[i] = (msg.partition(), msg.offset())

        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        pacer.wait()
    producer.flush(30)
    return coords


def _wait(done: Callable[[], bool], followers: list[Follower], idle_timeout_s: float) -> bool:
    """Until ``done()``, or no follower has read anything for ``idle_timeout_s``."""
    while not done():
        if time.monotonic() - max(f.last_s for f in followers) > idle_timeout_s:
            return False
        time.sleep(0.2)
    return True


# -------------------------------------------------------------------------- experiments


def _reference(
    txs: list[tuple[str, bytes]], partitions: int, models_path: Path
) -> dict[str, dict[str, Any]]:
    """The undisturbed run: the same records, per partition in publishing order, through
    the pipeline in process with the model the worker starts with. tx_id -> features and
    decision."""
    from vigil.models.kinds import RISK
    from vigil.models.serving import ModelHolder

    scorer = RISK.load_latest(models_path)
    model = ModelHolder(scorer) if scorer is not None else None
    from vigil.streams.partitioning import partition_for
    from vigil.streams.pipeline import RiskPipeline
    from vigil.streams.schemas import RawRecord

    offsets = [0] * partitions
    records = []
    for key, value in txs:
        p = partition_for(key.encode(), partitions)
        records.append(RawRecord("reference", p, offsets[p], key.encode(), value))
        offsets[p] += 1
    pipeline, store, out = RiskPipeline(model=model, partitions=partitions), {}, {}
    for i in range(0, len(records), 1000):
        result = pipeline.process_local(records[i : i + 1000], store)
        for _k, value in result.scores:
            score = json.loads(value)
            out[score["tx_id"]] = {"features": score["features"], "decision": score["decision"]}
    return out


def _same_features(a: list, b: list) -> bool:
    """The same values of every feature that depends on the events alone (the
    counterparty's are read as of the batch: ``READS_COUNTERPARTY``)."""
    from vigil.streams.features.library import FEATURE_SPEC, READS_COUNTERPARTY

    for name, x, y in zip(FEATURE_SPEC.names, a, b, strict=True):
        if name in READS_COUNTERPARTY:
            continue
        if (x is None) != (y is None):
            return False
        if x is not None and abs(x - y) > 1e-9 * max(1.0, abs(x), abs(y)):
            return False
    return True


def _kills(settings: Settings, cfg: ChaosConfig, say: Say) -> dict[str, Any]:
    gen = TransactionGenerator(GeneratorConfig(seed=cfg.seed, accounts=1000)).take(cfg.events)
    txs = [(g.key, g.value) for g in gen if g.tx is not None]
    say(f"kills: {len(txs)} transactions at {cfg.rate:.0f}/s, {cfg.kills} SIGKILLs")
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        scores: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        followers = _following(
            bootstrap, **{topics.scores: scores, topics.alerts: alerts, topics.dlq: dead}
        )
        worker = Worker(env, settings.state_dir / f"{topics.namespace}-worker.log")
        worker.start()
        rss: list[float | None] = []
        producer = make_producer(bootstrap)
        records = [(k.encode(), v, None) for k, v in txs]
        ids = {json.loads(v)["tx_id"] for _k, v in txs}
        # one segment per kill and one after the last: segment k streams in while worker k
        # is killed half-way through it, and segment k + 1 only after, so every restarted
        # worker has work to show when it scores again
        n, parts = len(records), cfg.kills + 1
        segments = [records[i * n // parts : (i + 1) * n // parts] for i in range(parts)]

        def publish(segment: list[tuple[bytes, bytes, None]]) -> threading.Thread:
            thread = threading.Thread(
                target=produce_all, args=(producer, topics.transactions, segment, cfg.rate)
            )
            thread.start()
            return thread

        def scored_since_start() -> bool:  # the worker in place has scored since it started
            since = worker.started_ms[-1]
            return any(s.get("processed_ms", 0) >= since for s in scores[-2000:])

        published = 0
        for k in range(cfg.kills):
            publisher = publish(segments[k])
            target = published + len(segments[k]) // 2
            _wait(
                lambda t=target: (
                    len({s.get("tx_id") for s in scores}) >= t and scored_since_start()
                ),
                followers,
                cfg.idle_timeout_s,
            )
            rss.append(worker.rss_mb())
            worker.kill()
            say(f"  kill {k + 1}/{cfg.kills} at {len(scores)} scores")
            time.sleep(0.2)
            worker.start()
            publisher.join()
            published += len(segments[k])
        publish(segments[-1]).join()
        finished = _wait(
            lambda: len({s.get("tx_id") for s in scores} & ids) >= len(ids),
            followers,
            cfg.idle_timeout_s,
        )
        time.sleep(1.0)  # the last outputs
        rss.append(worker.rss_mb())
        worker.stop()
        for f in followers:
            f.stop()
    say("  comparing with an undisturbed run")
    reference = _reference(txs, settings.partitions, settings.models_path)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for s in scores:
        by_id.setdefault(s.get("tx_id", ""), []).append(s)
    mismatched = sum(
        1
        for tx_id, got in by_id.items()
        if tx_id in reference
        and any(not _same_features(s["features"], reference[tx_id]["features"]) for s in got)
    )
    want_alerts = {t for t, r in reference.items() if r["decision"] != "allow"}
    alert_ids = [a.get("alert_id") for a in alerts]
    restarts = []
    for started in worker.started_ms[1:]:
        after = [s["processed_ms"] for s in scores if s.get("processed_ms", 0) >= started]
        restarts.append(round((min(after) - started) / 1000, 2) if after else None)
    scored = set(by_id) & ids
    dead_ids = {_dead_tx_id(d) for d in dead} & ids
    return {
        "published": len(txs),
        "scored": len(scored),
        "dead_lettered": len(dead_ids),
        "neither": len(ids - scored - dead_ids),
        "finished": finished,
        "duplicate_score_records": len(scores) - len(by_id),
        "duplicates_that_differ": sum(
            1
            for got in by_id.values()
            if any(not _same_features(s["features"], got[0]["features"]) for s in got[1:])
        ),
        "feature_values_differing": mismatched,
        "alert_records": len(alerts),
        "duplicate_alert_ids": len(alert_ids) - len(set(alert_ids)),
        "alerts_missing": len(want_alerts - {a.get("tx_id") for a in alerts}),
        "alerts_unexpected": len({a.get("tx_id") for a in alerts} - want_alerts),
        "kills": cfg.kills,
        "restart_to_scoring_s": restarts,
        "restart_to_scoring_max_s": max((r for r in restarts if r is not None), default=None),
        # sampled before each kill and at the end: a restarted worker rebuilds its state
        "rss_mb": {
            "first": rss[0],
            "end": rss[-1],
            "max": max((r for r in rss if r), default=None),
        },
    }


def _dead_tx_id(letter: dict[str, Any]) -> str | None:
    import base64

    try:
        return json.loads(base64.b64decode(letter.get("value_b64") or ""))["tx_id"]
    except (ValueError, KeyError, TypeError):
        return None


def _fuzz(settings: Settings, cfg: ChaosConfig, say: Say) -> dict[str, Any]:
    from vigil.streams.sources.hostile import HOSTILE_KINDS, hostile_records

    hostile = hostile_records(cfg.fuzz, seed=cfg.seed)
    ordinary = [
        (g.key.encode(), g.value, None)
        for g in TransactionGenerator(GeneratorConfig(seed=cfg.seed + 1)).take(cfg.fuzz)
        if g.tx is not None
    ]
    mixed: list[tuple[bytes | None, bytes | None, list | None]] = []
    at: list[int] = []  # where each hostile record is in ``mixed``
    for i, h in enumerate(hostile):
        at.append(len(mixed))
        mixed.append((h.key, h.value, h.headers))
        if i < len(ordinary):
            mixed.append(ordinary[i])
    say(f"fuzz: {len(hostile)} hostile records of {len(HOSTILE_KINDS)} kinds among ordinary ones")
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        scores: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        followers = _following(bootstrap, **{topics.scores: scores, topics.dlq: dead})
        worker = Worker(env, settings.state_dir / f"{topics.namespace}-worker.log")
        worker.start()
        coords = produce_all(make_producer(bootstrap), topics.transactions, mixed, cfg.rate)
        _wait(lambda: len(scores) + len(dead) >= len(mixed), followers, cfg.idle_timeout_s)
        time.sleep(1.0)
        rss_start, alive = worker.rss_mb(), worker.running
        worker.stop()
        for f in followers:
            f.stop()
    hostile_coords = [coords[j] if j < len(coords) else None for j in at]
    letters = {(d.get("partition"), d.get("offset")) for d in dead}
    score_count = Counter(s.get("tx_id") for s in scores)
    invalid_scores = allow_invalid = 0
    for s in scores:
        try:
            ScoreRecord.model_validate(s)
        except ValueError:
            invalid_scores += 1
            allow_invalid += s.get("decision") == "allow"
    by_kind: dict[str, Counter[str]] = {}
    unexpected: set[str] = set()
    for h, coord in zip(hostile, hostile_coords, strict=True):
        if coord is None:
            outcome = "unpublished"
        elif coord in letters:
            outcome = "dead"
        elif h.tx_id is not None and score_count[h.tx_id] > 0:
            outcome = "scored"
        else:
            outcome = "neither"
        by_kind.setdefault(h.kind, Counter())[outcome] += 1
        if outcome != h.expect:
            unexpected.add(h.kind)
    totals: Counter[str] = Counter()
    for counts in by_kind.values():
        totals.update(counts)
    expected = len(by_kind) - len(unexpected)
    return {
        "hostile": len(hostile),
        "kinds": len(by_kind),
        "kinds_as_expected": expected,
        "kinds_not_as_expected": sorted(unexpected),
        "ordinary": len(ordinary),
        "scored": totals["scored"],
        "dead_lettered": totals["dead"],
        "neither": totals["neither"],
        "unpublished": totals["unpublished"],  # refused by the broker itself
        "invalid_score_records": invalid_scores,
        "allow_with_invalid_score": allow_invalid,
        "worker_alive": alive,
        "worker_restarts": len(worker.started_ms) - 1,
        "rss_mb_end": rss_start,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
    }


RULE_BOMBS: dict[str, bytes] = {
    "sum_490_terms": json.dumps(
        {
            "ruleset": "bomb",
            "version": "1",
            "rules": [
                {
                    "name": "r",
                    "typology": "t",
                    "when": " + ".join(["amount"] * 490) + " > 1",
                    "score": 0.5,
                    "reason": "r",
                }
            ],
        }
    ).encode(),  # fmt: skip
    "parentheses_90": json.dumps(
        {
            "ruleset": "bomb",
            "version": "2",
            "rules": [
                {
                    "name": "r",
                    "typology": "t",
                    "when": "(" * 90 + "amount > 1" + ")" * 90,
                    "score": 0.5,
                    "reason": "r",
                }
            ],
        }
    ).encode(),  # fmt: skip
    "reason_width": json.dumps(
        {
            "ruleset": "bomb",
            "version": "3",
            "rules": [
                {
                    "name": "r",
                    "typology": "t",
                    "when": "amount > 1",
                    "score": 0.5,
                    "reason": "{amount:>1500000}",
                }
            ],
        }
    ).encode(),  # fmt: skip
    "yaml_nesting_5000": b"[" * 5000 + b"]" * 5000,
    "brackets_100000": b"[" * 100_000,
    "yaml_aliases": b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n",
    "document_2mb": b"ruleset: x\nnote: " + b"y" * 2_000_000,
    "binary": bytes(range(256)) * 10,
}
GOOD_RULESET = {
    "ruleset": "after-bombs",
    "version": "1",
    "rules": [
        {
            "name": "any_wire",
            "typology": "t",
            "when": "channel == 'wire'",
            "score": 0.6,
            "reason": "wire",
        },  # fmt: skip
    ],
}


def _rules(settings: Settings, cfg: ChaosConfig, say: Say) -> dict[str, Any]:
    say(f"rules: {len(RULE_BOMBS)} ruleset bombs, then a valid ruleset")
    txs = [
        (g.key.encode(), g.value, None)
        for g in TransactionGenerator(GeneratorConfig(seed=cfg.seed + 2)).take(2000)
        if g.tx is not None
    ]
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        scores: list[dict[str, Any]] = []
        followers = _following(bootstrap, **{topics.scores: scores})
        worker = Worker(env, settings.state_dir / f"{topics.namespace}-worker.log")
        worker.start()
        producer = make_producer(bootstrap, **{"message.max.bytes": 4_000_000})
        produce_all(producer, topics.transactions, txs[:1000])
        _wait(lambda: len(scores) >= 1000, followers, cfg.idle_timeout_s)
        bombs = [(b"bomb", doc, None) for doc in RULE_BOMBS.values()]
        produce_all(producer, topics.rules, bombs)
        produce_all(producer, topics.rules, [(b"good", json.dumps(GOOD_RULESET).encode(), None)])
        time.sleep(2.0)  # the follower applies rulesets between batches
        produce_all(producer, topics.transactions, txs[1000:])
        _wait(lambda: len(scores) >= len(txs), followers, cfg.idle_timeout_s)
        time.sleep(1.0)
        alive = worker.running
        worker.stop()
        followers[0].stop()
        log = worker.log()
    refused = log.count("refused, current rules stay") + log.count("record skipped")
    late = [s for s in scores[-200:]]
    return {
        "bombs": len(RULE_BOMBS),
        "refused": refused,
        "worker_alive": alive,
        "worker_restarts": len(worker.started_ms) - 1,
        "scored": len({s.get("tx_id") for s in scores}),
        "published": len(txs),
        "valid_ruleset_applied_after": all(
            s.get("ruleset_version") == "after-bombs:1" for s in late
        ),
        "recursion_errors_logged": log.count("RecursionError"),
    }


def _tiny_risk_model(directory: Path, seed: int) -> Path:
    """A small hybrid model to release (seconds to train)."""
    from vigil.models.risk import TabularConfig, export, history_from_generator, train

    history = history_from_generator(days=3, seed=seed, accounts=300, typology_rate=0.02)
    cfg = TabularConfig(seed=seed, trees=8, leaves=4, epochs=1, folds=2, hidden=4)
    model = train(history, cfg, say=lambda _m: None)
    return export(model, directory, history.features[:64])


def _release_attacks(settings: Settings, cfg: ChaosConfig, say: Say) -> dict[str, Any]:
    import copy

    from vigil.models.registry import build_release, release_messages, resign
    from vigil.models.signing import SigningKey

    say("releases: training two small models to release")
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        state = Path(env["VIGIL_STATE_DIR"])
        work = state / "chaos-models"
        older_dir = _tiny_risk_model(work / "older", cfg.seed)
        serving_dir = _tiny_risk_model(work / "serving", cfg.seed + 1)
        signer = Settings(state_dir=state).release_signer()  # the workers' dev key
        older = build_release(older_dir, signer)  # signed first: an older sequence
        serving = build_release(serving_dir, signer, chunk_bytes=16 * 1024)
        txs = [
            (g.key.encode(), g.value, None)
            for g in TransactionGenerator(GeneratorConfig(seed=cfg.seed + 3)).take(2000)
            if g.tx is not None
        ]
        scores: list[dict[str, Any]] = []
        followers = _following(bootstrap, **{topics.scores: scores})
        worker = Worker({**env, "VIGIL_MODEL_DIR": str(state / "no-models")}, state / "w.log")
        worker.start()
        producer = make_producer(bootstrap)
        produce_all(producer, topics.models, release_messages(serving))  # type: ignore[arg-type]
        produce_all(producer, topics.transactions, txs[:1000])
        _wait(lambda: len(scores) >= 1000, followers, cfg.idle_timeout_s)
        rss_before = worker.rss_mb()

        def manifest(release: Any, **changes: Any) -> tuple[bytes, bytes, list]:
            key, _value, headers = release_messages(release)[0]
            doc = {**copy.deepcopy(release.manifest), **changes}
            return key.encode(), json.dumps(doc).encode(), headers

        serving_records = [(k.encode(), v, h) for k, v, h in release_messages(serving)]
        attacks: dict[str, list] = {
            "forged": release_messages(build_release(serving_dir, SigningKey.generate())),
            "unsigned": [manifest(serving, signature=None)],
            "hmac_format_1": [manifest(serving, signature="0" * 64)],
            "tampered": [manifest(serving, golden={"rows": 1, "tolerance": 1.0})],
            "replayed": serving_records,
            "downgraded": release_messages(older),
            "oversized": release_messages(resign(serving, signer, size=10**12))[:1],
            "garbage_manifest": [(b"risk", b"[" * 100_000, serving_records[0][2])],
            "truncated": release_messages(resign(older, signer))[:-1],
        }
        for name, records in attacks.items():
            say(f"  {name}")
            produce_all(
                producer,
                topics.models,
                [(k.encode() if isinstance(k, str) else k, v, h) for k, v, h in records],
            )
        produce_all(producer, topics.transactions, txs[1000:])
        _wait(lambda: len(scores) >= len(txs), followers, cfg.idle_timeout_s)
        deadline = time.monotonic() + 40  # the truncated one is refused at its timeout
        while time.monotonic() < deadline and "truncated:" not in worker.log():
            time.sleep(0.5)
        rss_after, alive = worker.rss_mb(), worker.running
        worker.stop()
        followers[0].stop()
        log = worker.log()
    reasons = Counter()
    for line in log.splitlines():
        if " refused, " in line and "keeps serving: " in line:
            reasons[line.split("keeps serving: ", 1)[1][:60]] += 1
    late = {s.get("model_version") for s in scores[-500:]}
    return {
        "attacks": len(attacks),
        "refused": sum(reasons.values()),
        "refused_by_reason": dict(reasons),
        "serving_unchanged": late == {serving.version},
        "serving": sorted(v for v in late if v),
        "worker_alive": alive,
        "rss_mb": {"before": rss_before, "after": rss_after},
    }


def _soak(settings: Settings, cfg: ChaosConfig, say: Say) -> dict[str, Any]:
    seconds = cfg.soak_minutes * 60
    say(f"soak: {cfg.soak_minutes:g} min at {cfg.soak_rate:.0f} tx/s")
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        sent_ms: dict[str, int] = {}  # every 50th transaction's publish time
        latency: list[tuple[float, float]] = []  # (seconds into the run, ms)
        start = time.monotonic()
        count = [0]

        def on_score(msg: Message) -> None:
            count[0] += 1
            value = msg.value() or b""
            if b'"tx_id":"s' not in value[:40]:
                return
            score = _json(msg)
            sent = sent_ms.pop(score.get("tx_id", ""), None)
            if sent is not None:
                latency.append((time.monotonic() - start, score["processed_ms"] - sent))

        followers = [Follower(bootstrap, topics.scores, on_score)]
        followers[0].start()
        worker = Worker(env, settings.state_dir / f"{topics.namespace}-worker.log")
        worker.start()
        warm = [
            (g.key.encode(), g.value, None)
            for g in TransactionGenerator(GeneratorConfig(seed=cfg.seed + 4)).take(100)
            if g.tx is not None
        ]
        produce_all(make_producer(bootstrap), topics.transactions, warm)
        _wait(lambda: count[0] >= len(warm), followers, cfg.idle_timeout_s)  # worker ready
        start = time.monotonic()
        stop = threading.Event()
        published = [0]

        def stream() -> Iterable[tuple[bytes, bytes, None]]:
            for n, g in enumerate(TransactionGenerator(GeneratorConfig(seed=cfg.seed))):
                if g.tx is None:
                    continue
                published[0] += 1
                if n % 50 == 0:
                    tx = {**g.tx, "tx_id": f"s{n}"}
                    sent_ms[tx["tx_id"]] = now_ms()
                    yield g.key.encode(), json.dumps(tx).encode(), None
                else:
                    yield g.key.encode(), g.value, None

        publisher = threading.Thread(
            target=produce_all,
            args=(make_producer(bootstrap), topics.transactions, stream(), cfg.soak_rate),
            kwargs={"should_stop": stop.is_set},
        )
        publisher.start()
        rss: list[tuple[float, float | None]] = []
        while time.monotonic() - start < seconds and worker.running:
            rss.append((round(time.monotonic() - start, 1), worker.rss_mb()))
            time.sleep(min(10.0, max(1.0, seconds / 30)))
        stop.set()
        publisher.join()
        time.sleep(2.0)
        rss.append((round(time.monotonic() - start, 1), worker.rss_mb()))
        alive = worker.running
        worker.stop()
        followers[0].stop()
    warm_s = seconds / 3  # the first third: tables, caches and the allocator fill up
    after = [r for t, r in rss if t >= warm_s and r]
    minutes = max(1, int(seconds // 60) + (seconds % 60 > 0))
    p99 = []
    for m in range(minutes):
        window = [ms for t, ms in latency if m * 60 <= t < (m + 1) * 60]
        p99.append(percentile(window, 99) if window else None)
    return {
        "minutes": cfg.soak_minutes,
        "rate": cfg.soak_rate,
        "published": published[0],
        "worker_alive": alive,
        "rss_mb": rss,
        "warm_up_s": warm_s,
        "rss_growth_after_warm_up_pct": round(100 * (after[-1] - after[0]) / after[0], 1)
        if after
        else None,
        "p99_ms_by_minute": p99,
        "p99_ms_drift": (p99[-1] - p99[0]) if p99 and p99[0] is not None and p99[-1] else None,
    }


def run_chaos(settings: Settings, cfg: ChaosConfig, say: Say = lambda _m: None) -> dict[str, Any]:
    """Every experiment ``cfg`` asks for; one result object."""
    out: dict[str, Any] = {"config": cfg.__dict__}
    if cfg.kills or cfg.events:
        out["kills"] = _kills(settings, cfg, say)
    if cfg.fuzz:
        out["fuzz"] = _fuzz(settings, cfg, say)
    if cfg.rules:
        out["rules"] = _rules(settings, cfg, say)
    if cfg.releases:
        out["releases"] = _release_attacks(settings, cfg, say)
    if cfg.soak_minutes > 0:
        out["soak"] = _soak(settings, cfg, say)
    return out
