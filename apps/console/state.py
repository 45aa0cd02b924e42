"""What the console shows, built from topic records alone (no broker code here: the
readers in ``server.py`` feed it, tests feed it lists).

- **Cases**: the risk alerts grouped per account. A case is open while one of its alerted
  transactions has no disposition (a ``vigil.labels`` record); each alert keeps its
  reasons, rule hits and score, and the feature vector of its score record (the score
  records of ``review``/``block`` decisions are kept, the others only counted).
- **Rates**: risk scores and inspection clips per second, and their publish-to-output
  latency (a score's ``processed_ms`` against its transaction's broker timestamp; a clip's
  against its reference frame's ``ts_ms``, the camera's clock), over the last ``window_s``
  seconds; dead letters by reason since the start of the topic.
- **Inspection alerts** with the frame they point at (``ref_seq``): the newest frames of
  each camera are held for a while so an alert's frame is still there when it arrives.
- **Versions**: the model, ruleset and rates versions the newest outputs of each partition
  were made with (a partition is one worker's), and the release history.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.streams.features.library import FEATURE_SPEC

__all__ = ["ConsoleState", "HeldFrame"]

MAX_ALERTS = 50_000  # risk alerts kept (the oldest go first)
MAX_INSPECTION_ALERTS = 2_000
RECENT_TRANSACTIONS = 100_000  # for an alert's counterparty (its label names both sides)
FRAMES_PER_CAMERA = 512  # about 5 s at 100 fps: an alert comes well within it


@dataclass(frozen=True)
class HeldFrame:
    seq: int
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass
class _Second:
    count: int = 0
    latency_ms: list[float] = field(default_factory=list)


class _Rate:
    """Events per second and their latency, per wall-clock second, over a window."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.seconds: OrderedDict[int, _Second] = OrderedDict()

    def add(self, at_s: int, latency_ms: float | None) -> None:
        second = self.seconds.get(at_s)
        if second is None:
            second = self.seconds[at_s] = _Second()
            while self.seconds and next(iter(self.seconds)) < at_s - self.window_s:
                self.seconds.popitem(last=False)
        second.count += 1
        if latency_ms is not None:
            second.latency_ms.append(latency_ms)

    def series(self, now_s: int) -> list[dict[str, Any]]:
        """The window's complete seconds (the current one is still filling)."""
        out = []
        for at_s in range(now_s - self.window_s, now_s):
            second = self.seconds.get(at_s)
            if second is None:
                out.append({"t": at_s, "count": 0, "p50_ms": None, "p99_ms": None})
                continue
            lat = np.asarray(second.latency_ms) if second.latency_ms else None
            p50, p99 = (None, None) if lat is None else np.percentile(lat, [50, 99]).tolist()
            out.append({"t": at_s, "count": second.count, "p50_ms": p50, "p99_ms": p99})
        return out


class ConsoleState:
    """Thread-safe: readers call ``on_*`` from their threads, the web server reads."""

    def __init__(self, window_s: int = 120, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._lock = threading.Lock()
        self.clock = clock
        self.risk = _Rate(window_s)
        self.inspection = _Rate(window_s)
        self.dlq: Counter[str] = Counter()
        self.alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()  # alert_id -> alert
        self.by_tx: dict[str, str] = {}  # tx_id -> alert_id
        # the cases: account -> its alerts (alert_id -> alert), kept as alerts come and go
        self.by_account: dict[str, dict[str, dict[str, Any]]] = {}
        self.features: dict[str, tuple[str, list[float | None]]] = {}  # tx_id -> (spec, vec)
        self.labels: dict[str, dict[str, Any]] = {}  # tx_id -> newest label
        self.recent_tx: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.inspection_alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.frames: dict[str, deque[HeldFrame]] = {}
        self.alert_frames: dict[str, HeldFrame] = {}  # inspection alert_id -> its frame
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}  # (topic, partition) -> ...
        self.releases: list[dict[str, Any]] = []
        self.rulesets: list[dict[str, Any]] = []

    # -- readers ---------------------------------------------------------------------

    def on_score(self, doc: dict[str, Any], partition: int) -> None:
        with self._lock:
            # publish to score: the transaction's broker timestamp (its reader keeps the
            # recent ones) to the score's processed_ms; unknown while that reader lags
            tx = self.recent_tx.get(str(doc.get("tx_id")))
            processed = doc.get("processed_ms")
            latency = None
            if tx is not None and tx["published_ms"] > 0 and isinstance(processed, int):
                latency = float(max(0, processed - tx["published_ms"]))
            self.risk.add(int(self.clock()), latency)
            self._version("risk", partition, doc)
            if doc.get("decision") in ("review", "block") and isinstance(doc.get("features"), list):
                self.features[str(doc.get("tx_id"))] = (
                    str(doc.get("feature_spec")),
                    doc["features"],
                )
                while len(self.features) > MAX_ALERTS:
                    self.features.pop(next(iter(self.features)))

    def on_alert(self, doc: dict[str, Any]) -> None:
        alert_id, tx_id = doc.get("alert_id"), doc.get("tx_id")
        if not isinstance(alert_id, str) or not isinstance(tx_id, str):
            return
        with self._lock:
            if alert_id in self.alerts:  # again (at-least-once): as the new copy says
                self._forget(alert_id, self.alerts[alert_id])
            self.alerts[alert_id] = doc
            self.by_tx[tx_id] = alert_id
            self.by_account.setdefault(str(doc.get("account_id")), {})[alert_id] = doc
            while len(self.alerts) > MAX_ALERTS:
                self._forget(*next(iter(self.alerts.items())))

    def _forget(self, alert_id: str, alert: dict[str, Any]) -> None:
        del self.alerts[alert_id]
        self.by_tx.pop(str(alert.get("tx_id")), None)
        account = str(alert.get("account_id"))
        case = self.by_account.get(account, {})
        case.pop(alert_id, None)
        if not case:
            self.by_account.pop(account, None)

    def on_transaction(self, doc: dict[str, Any], published_ms: int) -> None:
        tx_id = doc.get("tx_id")
        if not isinstance(tx_id, str):
            return
        with self._lock:
            self.recent_tx[tx_id] = {
                "counterparty_id": doc.get("counterparty_id"),
                "published_ms": published_ms,
            }
            while len(self.recent_tx) > RECENT_TRANSACTIONS:
                self.recent_tx.popitem(last=False)

    def on_label(self, doc: dict[str, Any]) -> None:
        tx_id, label = doc.get("tx_id"), doc.get("label")
        if isinstance(tx_id, str) and type(label) is int and label in (0, 1):  # not True
            with self._lock:
                self.labels[tx_id] = doc

    def on_dead_letter(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self.dlq[str(doc.get("reason", "invalid"))] += 1

    def on_clip(self, doc: dict[str, Any], partition: int) -> None:
        latency = None
        if isinstance(doc.get("processed_ms"), int) and isinstance(doc.get("ts_ms"), int):
            latency = float(doc["processed_ms"] - doc["ts_ms"])
        with self._lock:
            self.inspection.add(int(self.clock()), latency)
            self._version("inspection", partition, doc)

    def on_frame(self, camera: str, frame: HeldFrame) -> None:
        with self._lock:
            held = self.frames.setdefault(camera, deque(maxlen=FRAMES_PER_CAMERA))
            held.append(frame)

    def on_inspection_alert(self, doc: dict[str, Any]) -> None:
        alert_id = doc.get("alert_id")
        if not isinstance(alert_id, str):
            return
        with self._lock:
            self.inspection_alerts[alert_id] = doc
            ref = doc.get("ref_seq")
            for frame in reversed(self.frames.get(str(doc.get("camera_id")), ())):
                if frame.seq == ref:
                    self.alert_frames[alert_id] = frame
                    break
            while len(self.inspection_alerts) > MAX_INSPECTION_ALERTS:
                old_id, _old = self.inspection_alerts.popitem(last=False)
                self.alert_frames.pop(old_id, None)

    def set_releases(self, releases: list[dict[str, Any]], rulesets: list[dict[str, Any]]) -> None:
        with self._lock:
            self.releases, self.rulesets = releases, rulesets

    def _version(self, worker: str, partition: int, doc: dict[str, Any]) -> None:
        self.versions[(worker, partition)] = {
            "worker": worker,
            "partition": partition,
            "model_version": doc.get("model_version"),
            "ruleset_version": doc.get("ruleset_version"),
            "rates_version": doc.get("rates_version"),
        }

    # -- views -----------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        now_s = int(self.clock())
        with self._lock:
            return {
                "risk": self.risk.series(now_s),
                "inspection": self.inspection.series(now_s),
                "dlq": dict(self.dlq.most_common()),
                "versions": [self.versions[k] for k in sorted(self.versions)],
                "releases": list(self.releases),
                "rulesets": list(self.rulesets),
                "open_cases": sum(
                    1
                    for alerts in self.by_account.values()
                    if any(a.get("tx_id") not in self.labels for a in alerts.values())
                ),
                "alerts": len(self.alerts),
            }

    def cases(
        self,
        status: str | None = None,
        decision: str | None = None,
        query: str = "",
        min_score: float = 0.0,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        with self._lock:
            found = [
                c
                for c in self._cases()
                if (status is None or c["status"] == status)
                and (decision is None or decision in c["decisions"])
                and query.lower() in c["account_id"].lower()
                and c["max_score"] >= min_score
            ]
        found.sort(key=lambda c: (c["status"] != "open", -c["last_ms"]))
        return found[:limit]

    def _cases(self) -> list[dict[str, Any]]:
        out = []
        for account, case in self.by_account.items():
            alerts = list(case.values())
            undecided = [a for a in alerts if a.get("tx_id") not in self.labels]
            out.append(
                {
                    "account_id": account,
                    "alerts": len(alerts),
                    "undecided": len(undecided),
                    "status": "open" if undecided else "closed",
                    "decisions": sorted({str(a.get("decision")) for a in alerts}),
                    "max_score": max(float(a.get("score") or 0) for a in alerts),
                    "last_ms": max(int(a.get("processed_ms") or 0) for a in alerts),
                }
            )
        return out

    def case(self, account_id: str) -> dict[str, Any] | None:
        with self._lock:
            alerts = list(self.by_account.get(account_id, {}).values())
            if not alerts:
                return None
            detail = []
            for alert in sorted(alerts, key=lambda a: a.get("ts_ms") or 0):
                tx_id = str(alert.get("tx_id"))
                spec, vector = self.features.get(tx_id, (None, None))
                known = spec == FEATURE_SPEC.label and vector is not None
                detail.append(
                    {
                        **alert,
                        "feature_spec": spec,
                        "features": vector,
                        # names where the spec is this build's (another's: values alone)
                        "feature_names": list(FEATURE_SPEC.names) if known else None,
                        "label": self.labels.get(tx_id),
                    }
                )
        return {"account_id": account_id, "alerts": detail}

    def transaction_for_label(self, tx_id: str) -> dict[str, Any] | None:
        """What a label record names: the alerted transaction's account, counterparty
        (when its transaction was seen) and time. None: no alert of this console has it."""
        with self._lock:
            alert_id = self.by_tx.get(tx_id)
            if alert_id is None:
                return None
            alert = self.alerts[alert_id]
            tx = self.recent_tx.get(tx_id) or {}
            return {
                "tx_id": tx_id,
                "account_id": alert.get("account_id"),
                "counterparty_id": tx.get("counterparty_id"),
                "ts_ms": alert.get("ts_ms"),
            }

    def inspection_list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            alerts = list(self.inspection_alerts.values())[-limit:]
            return [{**a, "has_frame": a.get("alert_id") in self.alert_frames} for a in alerts][
                ::-1
            ]

    def alert_frame(self, alert_id: str) -> tuple[dict[str, Any], HeldFrame] | None:
        with self._lock:
            frame = self.alert_frames.get(alert_id)
            alert = self.inspection_alerts.get(alert_id)
        return None if frame is None or alert is None else (alert, frame)
