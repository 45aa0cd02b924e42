"""Workers follow the single-partition control topics (rules, models) in full, from the
start, in a thread: no consumer group, since every worker needs every ruleset and every
model release, unlike transactions, which are shared out. Replaying from the start puts
the newest ruleset and model in force after a restart."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping

from confluent_kafka import KafkaError, Message

from vigil.apps.kafka import make_reader, read_from_start
from vigil.models.registry import Assembler, Limits, Refusal, Release, ReleaseError, serve_release
from vigil.models.serving import is_demo
from vigil.models.signing import TrustedKeys

__all__ = ["ModelFollower", "TopicFollower"]

log = logging.getLogger("vigil.follower")


class TopicFollower(threading.Thread):
    """Reads ``topic`` from its start until stopped; ``handle`` gets every record."""

    what = "records"  # for the log

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name=f"follow-{topic}", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stopping = threading.Event()
        self.caught_up = threading.Event()  # the topic's backlog has been applied
        self.skipped = 0  # records whose handling raised

    def run(self) -> None:
        reader = make_reader(self.bootstrap)
        try:
            read_from_start(reader, self.topic)
            while not self.stopping.is_set():
                for msg in reader.consume(100, 0.2):
                    err = msg.error()
                    if err is None:
                        self._handle_one(msg)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        log.error("reading %s: %s", self.topic, err)
                    elif not self.caught_up.is_set():
                        self.on_caught_up()
                        self.caught_up.set()
                self.tick()
        except Exception:  # never take the worker down; what it serves stays in force
            log.exception("following %s stopped; the current %s stay", self.topic, self.what)
        finally:
            reader.close()

    def _handle_one(self, msg: Message) -> None:
        """``handle``, surviving whatever one record does to it: a control topic keeps its
        records for ever, so a record that stopped the follower would stop it again after
        every restart, and every later release or ruleset would be ignored."""
        try:
            self.handle(msg)
        except Exception as exc:
            self.skipped += 1
            log.error(
                "%s@%d: record skipped, the current %s stay (%s: %.300s)",
                self.topic,
                msg.offset(),
                self.what,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, RecursionError),  # its traceback is 1,000 lines
            )

    def handle(self, msg: Message) -> None:
        raise NotImplementedError

    def on_caught_up(self) -> None:
        """Called once, when the backlog present at start has been handled."""

    def tick(self) -> None:
        """Called after every poll (about every 0.2 s when the topic is quiet)."""

    def stop(self) -> None:
        self.stopping.set()


class ModelFollower(TopicFollower):
    """Follows ``vigil.models`` for one model name: assembles releases, verifies them
    (signature, hashes, input spec, golden-batch parity) and hands each one that passes to
    ``install``; refused ones are logged and counted, and the serving model stays.

    During the backlog at start only the newest releases are kept; once caught up the
    newest that passes is installed (the topic is the deployment's record of what serves).

    ``initial`` (the model on local disk, say) is loaded and installed first, in this
    thread, so a worker loads it while it joins its group; ``loaded`` is set once that is
    done (or there was nothing to load), before any release from the topic is installed.
    """

    what = "model"
    BACKLOG = 3  # releases kept while catching up, newest last

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        name: str,
        trusted: TrustedKeys,
        check_spec: Callable[[dict], None],
        install: Callable[[object, Release | None], None],
        serving: Callable[[], str],
        counters: MutableMapping[str, int],
        timeout_s: float = 30.0,
        limits: Limits | None = None,
        initial: Callable[[], object | None] | None = None,
        serve_demo: bool = False,
    ) -> None:
        super().__init__(bootstrap, topic)
        self.name = name
        self.serve_demo = serve_demo
        self.initial = initial
        self.loaded = threading.Event()
        self.assembler = Assembler(trusted, {name}, timeout_s, limits)
        self.check_spec, self.install, self.serving = check_spec, install, serving
        self.counters = counters
        self.backlog: list[Release] = []

    def run(self) -> None:
        try:
            model = self.initial() if self.initial is not None else None
            if model is not None:
                self.install(model, None)
        except Exception:  # the topic's releases may still bring one
            log.exception("%s model not loaded; serving %s", self.name, self.serving())
        finally:
            self.loaded.set()
        super().run()

    def handle(self, msg: Message) -> None:
        ts_ms = msg.timestamp()[1]
        for got in self.assembler.add(msg.key(), msg.value(), msg.headers(), msg.offset(), ts_ms):
            if isinstance(got, Refusal):
                self._refused(got.version, got.reason, got.offset)
            elif self.caught_up.is_set():
                self._serve(got)
            else:
                self.backlog = [*self.backlog, got][-self.BACKLOG :]

    def on_caught_up(self) -> None:
        for release in reversed(self.backlog):  # the newest that passes
            if self._serve(release):
                break
        self.backlog = []

    def tick(self) -> None:
        for got in self.assembler.expire():
            self._refused(got.version, got.reason, got.offset)

    def _refused(self, version: str, reason: str, offset: int) -> None:
        self.counters["model_refused"] += 1
        where = f"{self.topic}@{offset}" if offset >= 0 else self.topic
        log.error(
            "%s release %s (%s) refused, %s keeps serving: %s",
            self.name,
            version,
            where,
            self.serving(),
            reason,
        )

    def _serve(self, release: Release) -> bool:
        if release.version == self.serving():
            log.info("%s release %s is already serving", self.name, release.version)
            return True
        if is_demo(release.manifest.get("model", {})) and not self.serve_demo:
            reason = (
                "a demo model (trained by `vigil demo` on generated data): served only with "
                "VIGIL_SERVE_DEMO_MODELS=true"
            )
            self._refused(release.version, reason, -1)
            return False
        try:
            scorer = serve_release(release, self.check_spec, self.assembler.limits)
        except ReleaseError as exc:
            self._refused(release.version, str(exc), -1)
            return False
        self.install(scorer, release)
        self.counters["model_swaps"] += 1
        m = release.manifest
        when = (
            f"{time.time() * 1000 - release.published_ms:.0f} ms after it was published"
            if self.caught_up.is_set()
            else "after catching up with the topic"  # at start: an older release
        )
        log.info(
            "%s release %s (%d-bit, %d bytes in %d chunks) serving %s",
            self.name,
            release.version,
            m.get("bits", 32),
            m["size"],
            m["chunks"],
            when,
        )
        return True
