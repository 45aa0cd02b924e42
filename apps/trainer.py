"""The refresh job: history + labels -> train -> quantize -> export -> gate -> publish.

``vigil train risk|inspection --publish [--every 10m]`` runs ``refresh`` once or on a
schedule. Each round (``risk_round``, ``inspection_round``) trains a challenger (the model
layer's ``fit_and_export`` / ``fit_inspection``, which run the NNs on
the training engine with ``--nproc``), quantizes it (``--bits``, verified against fp32 by
the export), then scores champion and challenger on the same recent labelled data:

- risk: the last ``holdout_days`` of the labelled stream (``vigil.transactions`` joined
  with ``vigil.labels``) when it holds enough of it, else of the generated or file
  history the challenger was trained on (it never saw those days);
- inspection: simulated clips of part textures neither model trained on.

The champion is what the workers serve: the newest valid release on ``vigil.models``
(``apps.releases``). The challenger is published (signed, chunked) only when it is not
worse; a round that fails is logged and the schedule goes on.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vigil.apps.broker import ensure_one
from vigil.apps.metrics import BatchHistogram, Metrics
from vigil.apps.releases import publish_release, read_releases
from vigil.apps.settings import Settings
from vigil.errors import UsageError
from vigil.models.inspection import VideoConfig, fit_inspection, make_clips
from vigil.models.kinds import INSPECTION, RISK, kind_of
from vigil.models.registry import build_release
from vigil.models.risk import History, TabularConfig, fit_and_export
from vigil.models.serving import (
    ModelError,
    read_files,
    read_manifest,
)
from vigil.streams.currency import Rates, RatesError, load_rates, read_rates
from vigil.streams.sources.camera import HELDOUT_TEXTURES

__all__ = [
    "MIN_STREAM_POSITIVES",
    "RefreshWatch",
    "gate_and_publish",
    "inspection_round",
    "risk_round",
    "history_from_stream",
    "parse_every",
    "run_schedule",
]

log = logging.getLogger("vigil.trainer")
MIN_STREAM_ROWS, MIN_STREAM_POSITIVES = 2000, 10


def parse_every(text: str) -> float:
    """``90s``, ``10m``, ``2h`` -> seconds (at least 10 s)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", text)
    if not found:
        raise UsageError(f"--every {text!r}: a number and a unit, s, m or h (e.g. 10m)")
    seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2)]
    if seconds < 10:
        raise UsageError(f"--every {text!r}: at least 10s between rounds")
    return seconds


def rates_in_force(settings: Settings, bootstrap: str) -> Rates | None:
    """The rates table the workers convert with now: the newest table on the rates topic
    that they would install (it parses, in the reporting currency), else the one at
    ``VIGIL_RATES_PATH``, else None (the built-in table)."""
    from vigil.apps.clients import read_messages

    newest = None
    try:
        for msg in read_messages(bootstrap, settings.topics.rates):
            try:
                rates = read_rates(msg.value() or b"", "rates record")
            except RatesError:
                continue  # the workers refused it too
            if rates.base == settings.reporting_currency:
                newest = rates
    except LookupError:  # no rates topic yet
        pass
    if newest is not None:
        return newest
    return None if settings.rates_path is None else load_rates(settings.rates_path)


def history_from_stream(bootstrap: str, transactions: str, labels: str, rates=None):  # type: ignore[no-untyped-def]
    """The labelled part of the stream: every transaction on ``transactions`` that has a
    label on ``labels`` (the newest label of a tx_id wins), featurised in event-time order
    as the workers computed them (amounts converted with ``rates``, default the built-in
    table). None when either topic is missing."""
    from vigil.apps.clients import read_messages
    from vigil.models.risk import featurise

    try:
        truth: dict[str, tuple[int, str | None]] = {}
        for msg in read_messages(bootstrap, labels):
            try:
                rec = json.loads(msg.value())
                truth[str(rec["tx_id"])] = (int(rec["label"]), rec.get("typology"))
            except (ValueError, KeyError, TypeError):
                continue  # not a label record: the dead-letter topic is the workers' job
        if not truth:
            return None
        lines = []
        for msg in read_messages(bootstrap, transactions):
            try:
                ts = int(json.loads(msg.value()).get("ts_ms", 0))
            except (ValueError, TypeError, AttributeError):
                continue
            lines.append((ts, msg.value()))
    except LookupError:
        return None
    lines.sort(key=lambda t: t[0])
    return featurise((v for _ts, v in lines), truth, rates=rates)


def gate_and_publish(
    settings: Settings,
    bootstrap: str,
    challenger_dir: Path,
    data_for: Callable[[dict], Any],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the serving release (champion) and ``challenger_dir`` on the same data
    (``data_for(model manifest)``: clips come in each model's input size); publish the
    challenger when it is not worse. Returns what was decided and why."""
    signer = settings.release_signer()
    topic = settings.topics.models
    manifest = read_manifest(challenger_dir)
    name = manifest["name"]
    model_kind = kind_of(manifest)
    challenger = model_kind.scorer(read_files(challenger_dir, manifest), manifest)
    data = data_for(manifest)
    out: dict[str, Any] = {
        "model": name,
        "metric": model_kind.metric,
        "challenger": manifest["version"],
        "challenger_bits": manifest.get("bits", 32),
        "challenger_score": model_kind.score(challenger, data),
        "rows": len(data.labels),
        "positives": int(np.sum(data.labels)),
    }
    ensure_one(bootstrap, settings.topics, topic, settings.replication_factor)
    champion = read_releases(bootstrap, topic, settings.release_trusted()).latest(name)
    if champion is None:
        out |= {"champion": None, "published": True, "reason": "no model serves yet"}
    elif champion.version == manifest["version"]:
        out |= {"champion": champion.version, "published": False, "reason": "already serving"}
    else:
        out["champion"] = champion.version
        try:
            model = champion.manifest["model"]
            champion_kind = kind_of(model)
            scorer = champion_kind.scorer(champion.files(), model)
            scored = champion_kind.score(scorer, data_for(model))
        except (ModelError, ValueError) as exc:  # another feature spec, say: not comparable
            out |= {"published": True, "reason": f"the champion cannot be scored here: {exc}"}
        else:
            out["champion_score"] = scored
            better = out["challenger_score"] >= scored
            out["published"] = better
            out["reason"] = "not worse than the champion" if better else "worse than the champion"
    if out["published"]:
        release = build_release(challenger_dir, signer, replaces=out.get("champion"))
        publish_release(bootstrap, topic, release)
        say(f"published {name} {release.version}: {out['reason']}")
    else:
        say(f"kept {out['champion']}: challenger {out['challenger']} {out['reason']}")
    return out


def run_schedule(
    round_: Callable[[int], dict[str, Any]],
    every_s: float | None,
    stop: threading.Event,
    report: Callable[[dict[str, Any]], None],
) -> int:
    """Run ``round_(n)`` once, or every ``every_s`` seconds until ``stop`` is set. A round
    that raises is reported and the schedule goes on (a single run fails). Returns the
    number of failed rounds."""
    failed, n = 0, 0
    while True:
        began = time.monotonic()
        try:
            result = round_(n)
        except Exception as exc:  # one bad round (broker away, no positives) is not the end
            if every_s is None:
                raise
            log.exception("refresh round %d failed; the next one runs on schedule", n)
            failed += 1
            result = {"round": n, "error": str(exc)}
        report({"round": n, **result})
        n += 1
        if every_s is None or stop.wait(max(0.0, every_s - (time.monotonic() - began))):
            return failed


# a round: seconds (risk ~30 s to minutes, inspection 10-40 min on a CPU)
ROUND_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200)


class RefreshWatch:
    """Metrics and health of a scheduled refresh job (``--every``): its rounds, failed
    rounds, releases published and challengers kept out, the time of a round, the scores
    it last compared and the release it last published. ``/healthz`` says what the job
    is doing (a round runs on the main thread for minutes: nothing for a stall check to
    see); ``/readyz`` fails while the last round failed, so an alert can watch it."""

    def __init__(self, model: str) -> None:
        self.metrics = Metrics(
            f"{model}_trainer",
            [BatchHistogram("round_seconds", "time of a refresh round", ROUND_BUCKETS)],
        )
        self.counters = {"rounds": 0, "rounds_failed": 0, "published": 0, "kept": 0}
        self._gauges: dict[str, float] = {}
        self._info: dict[str, dict[str, str]] = {}
        self._round: tuple[int, float] | None = None  # the round running, and since when
        self._last_error: str | None = None
        self.metrics.refresh(self.counters)

    def wrap(self, round_: Callable[[int], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
        """``round_`` observed: counted, timed, its decision kept for the metrics."""

        def watched(n: int) -> dict[str, Any]:
            began = time.monotonic()
            self._round = (n, began)
            try:
                result = round_(n)
            except BaseException as exc:
                self._ended(began, None, f"{type(exc).__name__}: {exc}")
                raise
            self._ended(began, result, None)
            return result

        return watched

    def _ended(self, began: float, result: dict[str, Any] | None, error: str | None) -> None:
        self._round = None
        self.counters["rounds"] += 1
        now_s = time.time()
        self._gauges["last_round_timestamp_seconds"] = now_s
        self._last_error = error
        if result is None:
            self.counters["rounds_failed"] += 1
        else:
            self._gauges["last_success_timestamp_seconds"] = now_s
            self.counters["published" if result.get("published") else "kept"] += 1
            for side in ("challenger", "champion"):
                if isinstance(result.get(f"{side}_score"), int | float):
                    self._gauges[f"{side}_score"] = float(result[f"{side}_score"])
            if result.get("published") and result.get("challenger"):
                self._info["published"] = {
                    "model": str(result.get("model", "")),
                    "version": str(result["challenger"]),
                }
        self.metrics.histograms["round_seconds"].observe([time.monotonic() - began])
        gauges = {k: (k.replace("_", " "), {(): v}) for k, v in self._gauges.items()}
        self.metrics.refresh(self.counters, gauges, self._info)

    def alive(self) -> tuple[bool, str]:
        running = self._round
        if running is not None:
            return True, f"round {running[0]} running for {time.monotonic() - running[1]:.0f} s"
        return True, f"waiting for the next round ({self.counters['rounds']} done)"

    def ready(self) -> tuple[bool, str]:
        if self._last_error is not None:
            return False, f"the last round failed: {self._last_error}"
        return True, f"{self.counters['rounds']} rounds, {self.counters['published']} published"


Say = Callable[[str], object]


def inspection_round(
    settings: Settings, bootstrap: str, cfg: VideoConfig, root: Path, bits: int, say: Say
) -> Callable[[int], dict[str, Any]]:
    """The inspection refresh job's round ``n``: train on other simulated clips
    (``cfg.seed + n``), export at ``bits`` (32: float), gate against the serving model on
    clips of textures neither trained on, publish when not worse. Returns what it decided."""

    def round_(n: int) -> dict[str, Any]:
        path, _report = fit_inspection(replace(cfg, seed=cfg.seed + n), root, say)
        challenger = path
        if bits != 32:
            challenger, _q = INSPECTION.export(path, bits, INSPECTION.exports(root), None, say)
        clips_by_size: dict[tuple, object] = {}

        def data_for(model: dict):  # type: ignore[no-untyped-def]
            # the same parts and defects, in each model's own input size
            c = VideoConfig(**model["config"])
            key = (c.frames, c.size, c.camera_size)
            if key not in clips_by_size:
                seed = cfg.seed + 5000 + n
                clips_by_size[key] = make_clips(cfg.test_clips, c, HELDOUT_TEXTURES, seed)
            return clips_by_size[key]

        decision = gate_and_publish(settings, bootstrap, challenger, data_for, say)
        return {"trained": path.name, **decision}

    return round_


def risk_round(
    settings: Settings,
    bootstrap: str,
    history: Callable[[int], tuple[History, str]],
    holdout_days: float,
    cfg: TabularConfig,
    target: Path,
    bits: int,
    say: Say,
    allow_synthetic: bool = False,
) -> Callable[[int], dict[str, Any]]:
    """The risk refresh job's round ``n``: train on the labelled stream when it holds
    enough (else on ``history(n)``, generated or from files), export at ``bits``, gate
    against the serving model on the same held-out days, publish when not worse. A round
    whose stream is short publishes nothing unless ``allow_synthetic`` (the caller's word
    that ``history`` may be used: a model of generated customers must not reach
    production by default; the round does not even train)."""
    topics = settings.topics

    def round_(n: int) -> dict[str, Any]:
        rates = rates_in_force(settings, bootstrap)  # as the workers convert now
        data = history_from_stream(bootstrap, topics.transactions, topics.labels, rates)
        source = "stream"
        if data is None or len(data) < MIN_STREAM_ROWS or data.labels.sum() < MIN_STREAM_POSITIVES:
            rows = 0 if data is None else len(data)
            positives = 0 if data is None else int(data.labels.sum())
            if not allow_synthetic:
                reason = (
                    f"the stream holds {rows} labelled transactions ({positives} positive), "
                    f"fewer than {MIN_STREAM_ROWS} ({MIN_STREAM_POSITIVES}): a model trained "
                    "on generated history is published only with --allow-synthetic"
                )
                say(f"round {n}: nothing published: {reason}")
                return {"source": "stream", "published": False, "reason": reason}
            data, source = history(n)
        say(f"round {n}: training on the {source} history ({len(data)} labelled transactions)")
        round_cfg = replace(cfg, seed=cfg.seed + n)
        path, _report, test_set = fit_and_export(data, holdout_days, round_cfg, target, say)
        challenger = path
        if bits != 32:
            challenger, _q = RISK.export(path, bits, RISK.exports(target), None, say)

        def data_for(model: dict):  # type: ignore[no-untyped-def]
            RISK.check(model, "model")
            return test_set

        decision = gate_and_publish(settings, bootstrap, challenger, data_for, say)
        return {"source": source, "trained": path.name, **decision}

    return round_
