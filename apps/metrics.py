"""Metrics and health of a long-running worker: Prometheus exposition on ``/metrics``,
liveness on ``/healthz``, readiness on ``/readyz``, served by a small HTTP thread.

Nothing is observed per event. The workers already count per micro-batch (their
``counters``); the event loop hands a copy of them to :meth:`Metrics.refresh` about once a
second, and the collector exposes that copy, so a scrape never reads what the loop is
changing. Histograms take a micro-batch's values at once (:meth:`BatchHistogram.observe`:
one numpy call), so the hot path pays a few calls per batch.

- Every counter ``k`` is ``vigil_<worker>_<k>_total``; the dead letters by reason
  (``dlq:<reason>``) are ``vigil_<worker>_dead_letters_total{reason=...}``.
- Gauges (consumer lag per partition, ...) and info metrics (the model, ruleset and rates
  versions in service) are set with :meth:`Metrics.refresh` too.
- ``/healthz`` answers 503 when the event loop has not refreshed the metrics for
  ``stall_s`` (a loop that stopped turning); ``/readyz`` asks the worker (partitions
  assigned, and a model or rules-only in force) and says why not.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from vigil.streams.schemas import DLQ_COUNTER_PREFIX

__all__ = ["BatchHistogram", "Metrics", "MetricsServer", "serve"]

log = logging.getLogger("vigil.metrics")
STALL_S = 30.0  # /healthz fails when the event loop has not refreshed the metrics for this long
_NAME = re.compile(r"[^a-zA-Z0-9_]")

Ready = Callable[[], tuple[bool, str]]  # (ready, why) for /readyz


class BatchHistogram:
    """A Prometheus histogram fed a micro-batch of observations at once."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(sorted(buckets), dtype=float)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last: above all
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: Iterable[float] | np.ndarray) -> None:
        """Count ``values`` (NaN is left out: no value to count)."""
        v = np.asarray(values, dtype=float).ravel()
        v = v[~np.isnan(v)]
        if not len(v):
            return
        # bucket i holds bounds[i-1] < v <= bounds[i] (Prometheus' "le")
        at = np.searchsorted(self.bounds, v, "left")
        counts = np.bincount(at, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def family(self, prefix: str) -> HistogramMetricFamily:
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        cumulative = np.cumsum(counts).tolist()
        buckets = [(_bound(b), c) for b, c in zip(self.bounds.tolist(), cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        family = HistogramMetricFamily(f"{prefix}_{self.name}", self.documentation)
        family.add_metric([], buckets, total)
        return family


def _bound(b: float) -> str:
    return repr(float(b))


class Metrics:
    """One worker's metrics (``worker``: risk, inspection, ...) in a registry of its own."""

    def __init__(self, worker: str, histograms: Sequence[BatchHistogram] = (), stall_s=STALL_S):
        self.prefix = f"vigil_{worker}"
        self.histograms = {h.name: h for h in histograms}
        self.stall_s = stall_s
        self._counters: dict[str, float] = {}
        self._gauges: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
        self._info: dict[str, dict[str, str]] = {}
        self._refreshed = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def refresh(
        self,
        counters: Mapping[str, float],
        gauges: Mapping[str, tuple[str, Mapping[tuple[tuple[str, str], ...], float]]] = {},
        info: Mapping[str, Mapping[str, str]] = {},
    ) -> None:
        """From the event loop: the counters as they are now (copied), gauges (name ->
        (help, {labels: value}), replacing that gauge's series) and info metrics; also
        what ``/healthz`` takes for the loop turning."""
        self._counters = dict(counters)
        for name, (doc, series) in gauges.items():
            self._gauges[name] = (doc, dict(series))
        for name, labels in info.items():
            self._info[name] = dict(labels)
        self.beat()

    def beat(self) -> None:
        """From the event loop: it turns (``refresh`` does this too)."""
        self._refreshed = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        idle = time.monotonic() - self._refreshed
        if idle > self.stall_s:
            return False, f"event loop has not turned for {idle:.0f} s"
        return True, "ok"

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        dead = CounterMetricFamily(
            f"{self.prefix}_dead_letters", "records sent to the DLQ, by reason", labels=["reason"]
        )
        for key in sorted(counters):
            if key.startswith(DLQ_COUNTER_PREFIX):
                dead.add_metric([key[len(DLQ_COUNTER_PREFIX) :]], counters[key])
            else:
                name = f"{self.prefix}_{_NAME.sub('_', key)}"
                yield CounterMetricFamily(name, f"{key} (worker counter)", value=counters[key])
        yield dead
        for name, (doc, series) in sorted(self._gauges.items()):
            names = sorted({k for labels in series for k, _v in labels})
            family = GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
            for labels, value in series.items():
                values = dict(labels)
                family.add_metric([values.get(k, "") for k in names], value)
            yield family
        for name, labels in sorted(self._info.items()):
            family = InfoMetricFamily(f"{self.prefix}_{name}", f"{name} in service")
            family.add_metric([], labels)
            yield family
        for h in self.histograms.values():
            yield h.family(self.prefix)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


class MetricsServer:
    """The HTTP thread serving one worker's ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(
        self, metrics: Metrics, ready: Ready, host: str, port: int, alive: Ready | None = None
    ) -> None:
        handler = _handler(metrics, ready, alive or metrics.alive)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name=f"metrics-{self.port}", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5.0)


def serve(
    metrics: Metrics, ready: Ready, host: str, port: int, alive: Ready | None = None
) -> MetricsServer | None:
    """Start serving on ``host:port`` (port 0: not at all); a port that cannot be bound is
    logged, not fatal: the worker's job is scoring, and its readiness probe will say the
    rest. ``alive`` answers ``/healthz`` (default: the loop refreshed within ``stall_s``)."""
    if not port:
        log.info("metrics and health endpoints off (port 0)")
        return None
    try:
        server = MetricsServer(metrics, ready, host, port, alive).start()
    except OSError as exc:
        log.error("metrics and health endpoints not served: %s:%d: %s", host, port, exc)
        return None
    log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, port)
    return server


def _handler(metrics: Metrics, ready: Ready, alive: Ready) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                try:
                    ok, why = alive() if path == "/healthz" else ready()
                except Exception as exc:  # a probe must answer, whatever went wrong
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                self._send(200 if ok else 503, f"{why}\n".encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds: not worth a log line each

    return Handler
