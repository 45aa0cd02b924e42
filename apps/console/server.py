"""``vigil ui``: the live console, served by aiohttp from this process. It reads the topics
like any client (one reader thread per topic, feeding ``ConsoleState``) and writes only
``vigil.labels`` records, the analyst's dispositions, which training learns from and the
risk workers fold into state. Its page and script are bundled (``static/``): nothing is
fetched from elsewhere."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import cv2
import numpy as np
import orjson
from aiohttp import web

from vigil.apps.clients import read_messages
from vigil.apps.console.state import ConsoleState, HeldFrame
from vigil.apps.labels import label_record, publish_label
from vigil.apps.releases import read_releases
from vigil.apps.settings import Settings
from vigil.errors import VigilError
from vigil.streams.frames import FrameError, decode_frame, frame_seq

__all__ = ["Console", "console_app"]

log = logging.getLogger("vigil.console")
RELEASES_EVERY_S = 10.0
THUMB_WIDTH = 320
LIVE_HISTORY_MS = 60_000  # the rates and recent frames start this far back


def _json(msg: Any) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(msg.value() or b"")
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _each(handler: Callable[..., None], *also: Callable[[Any], Any]) -> Callable[[Any], None]:
    """A reader's handler: ``handler(doc, *(f(msg) for f in also))`` for each JSON object
    record (anything else is the workers' to dead-letter, not the console's to show)."""

    def handle(msg: Any) -> None:
        doc = _json(msg)
        if doc is not None:
            handler(doc, *(f(msg) for f in also))

    return handle


class Console:
    """The readers feeding one ``ConsoleState``, and what the web handlers call."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings, self.bootstrap = settings, bootstrap
        self.state = ConsoleState()
        self.stop = threading.Event()
        self.errors: dict[str, str] = {}  # topic -> why its reader stopped
        self._threads: list[threading.Thread] = []

    def start(self) -> Console:
        t, s = self.settings.topics, self.state

        def frames(msg: Any) -> None:
            headers = tuple(msg.headers() or ())
            try:
                seq = frame_seq(headers)
            except FrameError:
                return  # the workers dead-letter it; nothing to show
            if msg.value():
                key = (msg.key() or b"").decode(errors="replace")
                s.on_frame(key, HeldFrame(seq, msg.value(), headers))

        def partition(msg: Any) -> int:
            return msg.partition()

        def published_ms(msg: Any) -> int:
            return msg.timestamp()[1]

        # live views start a minute back; cases, labels and dead letters at the beginning
        since_ms = int(time.time() * 1000) - LIVE_HISTORY_MS
        self._read(t.transactions, _each(s.on_transaction, published_ms), since_ms)
        self._read(t.scores, _each(s.on_score, partition), since_ms)
        self._read(t.frames, frames, since_ms)
        self._read(t.inspection_clips, _each(s.on_clip, partition), since_ms)
        self._read(t.alerts, _each(s.on_alert))
        self._read(t.labels, _each(s.on_label))
        self._read(t.dlq, _each(s.on_dead_letter))
        self._read(t.inspection_alerts, _each(s.on_inspection_alert))
        thread = threading.Thread(target=self._releases, name="console-releases", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)

    def _read(self, topic: str, handle: Callable[[Any], None], since_ms: int | None = None) -> None:
        def run() -> None:
            handled: dict[int, int] = {}  # partition -> last offset: a restart re-reads
            while not self.stop.is_set():
                try:
                    for msg in read_messages(
                        self.bootstrap,
                        topic,
                        follow=True,
                        since_ms=since_ms,
                        idle_timeout_s=0.2,
                        should_stop=self.stop.is_set,
                    ):
                        if msg.offset() <= handled.get(msg.partition(), -1):
                            continue  # handled before the reader restarted
                        handled[msg.partition()] = msg.offset()
                        handle(msg)
                    return
                except VigilError as exc:  # the topic is not there yet: try again
                    self.errors[topic] = str(exc)
                    self.stop.wait(2.0)
                except Exception:  # a reader must not die silently: log it, go on
                    log.exception("console reader of %s failed; it restarts", topic)
                    self.stop.wait(2.0)

        thread = threading.Thread(target=run, name=f"console-{topic}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _releases(self) -> None:
        t = self.settings.topics
        trusted = self.settings.release_trusted()
        while not self.stop.is_set():
            try:
                releases = read_releases(self.bootstrap, t.models, trusted).rows()
                rulesets = []
                for msg in read_messages(self.bootstrap, t.rules):
                    doc = _json(msg)
                    if doc is not None:
                        rulesets.append(
                            {
                                "ruleset": doc.get("ruleset"),
                                "version": doc.get("version"),
                                "mode": doc.get("mode", "live"),
                                "rules": len(doc.get("rules") or []),
                                "published_ms": msg.timestamp()[1],
                            }
                        )
                self.state.set_releases(releases, rulesets)
            except Exception as exc:  # not there yet, broker away: shown, retried
                self.errors["releases"] = str(exc)
            self.stop.wait(RELEASES_EVERY_S)

    def label(self, tx_id: str, fraud: bool, typology: str | None) -> dict[str, Any]:
        tx = self.state.transaction_for_label(tx_id)
        if tx is None:
            raise web.HTTPNotFound(text=f"no alert of this console is for transaction {tx_id!r}")
        record = label_record(tx, fraud, typology)
        publish_label(self.bootstrap, self.settings.topics.labels, record)
        self.state.on_label(record)  # shown at once; the labels reader sees it again
        return record

    def thumbnail(self, alert_id: str) -> bytes | None:
        """The alert's frame as a PNG, its box drawn, at most THUMB_WIDTH wide."""
        found = self.state.alert_frame(alert_id)
        if found is None:
            return None
        alert, frame = found
        try:
            key = str(alert.get("camera_id", "")).encode()
            img = decode_frame(key, frame.value, frame.headers).image
        except FrameError:
            return None
        img = np.ascontiguousarray(img)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if img.dtype != np.uint8:
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        bbox = alert.get("bbox")
        scale = min(1.0, THUMB_WIDTH / img.shape[1])
        if scale < 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if isinstance(bbox, list) and len(bbox) == 4:
            x, y, w, h = (int(round(v * scale)) for v in bbox)
            cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (0, 0, 255), 2)  # red (BGR)
        ok, png = cv2.imencode(".png", img)
        return png.tobytes() if ok else None


def console_app(console: Console) -> web.Application:
    static = resources.files("vigil.apps.console").joinpath("static")
    state = console.state

    async def page(_request: web.Request) -> web.Response:
        html = static.joinpath("index.html").read_text()
        return web.Response(text=html, content_type="text/html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kinds = {".js": "application/javascript", ".css": "text/css"}
        kind = next((v for k, v in kinds.items() if name.endswith(k)), None)
        if kind is None or "/" in name or not static.joinpath(name).is_file():
            raise web.HTTPNotFound()
        return web.Response(text=static.joinpath(name).read_text(), content_type=kind)

    async def overview(_request: web.Request) -> web.Response:
        doc = state.overview() | {"errors": dict(console.errors)}
        return web.json_response(doc, dumps=_dumps)

    async def cases(request: web.Request) -> web.Response:
        q = request.query
        try:
            min_score = float(q.get("min_score") or 0)
        except ValueError:
            raise web.HTTPBadRequest(text="min_score must be a number") from None
        found = state.cases(
            status=q.get("status") or None,
            decision=q.get("decision") or None,
            query=q.get("q", ""),
            min_score=min_score,
        )
        return web.json_response(found, dumps=_dumps)

    async def case(request: web.Request) -> web.Response:
        found = state.case(request.match_info["account"])
        if found is None:
            raise web.HTTPNotFound(text="no alerts for this account")
        return web.json_response(found, dumps=_dumps)

    async def label(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            tx_id, fraud = str(body["tx_id"]), bool(body["fraud"])
            typology = body.get("typology") or None
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='expected {"tx_id": ..., "fraud": true|false}') from None
        loop = asyncio.get_running_loop()
        try:
            record = await loop.run_in_executor(None, console.label, tx_id, fraud, typology)
        except VigilError as exc:
            raise web.HTTPBadGateway(text=str(exc)) from None
        return web.json_response(record, dumps=_dumps)

    async def inspection(_request: web.Request) -> web.Response:
        return web.json_response(state.inspection_list(), dumps=_dumps)

    async def thumb(request: web.Request) -> web.Response:
        png = await asyncio.get_running_loop().run_in_executor(
            None, console.thumbnail, request.match_info["alert_id"]
        )
        if png is None:
            raise web.HTTPNotFound(text="the alert's frame is not held (older than the console)")
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.add_routes(
        [
            web.get("/", page),
            web.get("/static/{name}", asset),
            web.get("/api/overview", overview),
            web.get("/api/cases", cases),
            web.get("/api/cases/{account}", case),
            web.post("/api/labels", label),
            web.get("/api/inspection", inspection),
            web.get("/api/thumb/{alert_id}.png", thumb),
        ]
    )
    return app


def _dumps(doc: Any) -> str:
    return json.dumps(doc, allow_nan=False, default=str)


def serve(settings: Settings, bootstrap: str, host: str, port: int, stop: threading.Event) -> None:
    """Serve the console until ``stop`` is set."""
    console = Console(settings, bootstrap).start()

    async def main() -> None:
        runner = web.AppRunner(console_app(console), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("console on http://%s:%d/", host, port)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        console.close()
        time.sleep(0)  # readers notice the stop at their next poll
