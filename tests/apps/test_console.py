"""`vigil ui` in a real headless browser (Debian's Chromium, driven by Playwright; `make
test` installs both): the page loads, a risk alert published here appears as a case with
its reasons and features, the Fraud button lands a label on vigil.labels naming the
transaction's account and counterparty, an inspection alert shows its frame with the box
drawn. A screenshot is saved as a test artifact (VIGIL_TEST_ARTIFACTS, default
artifacts/ at the repository root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.apps.helpers import collect
from tests.conftest import worker_env
from tests.reference import wire
from vigil.apps.clients import publish
from vigil.apps.process import free_port
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.frames import Frame, encode_frame

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("VIGIL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")
)
# what the machine's closed network needs (no background fetches, no sandbox as root)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def console_url(settings, tmp_path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "console.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.apps.cli", "ui", "--port", str(port)],
        env={**os.environ, **worker_env(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/overview", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "console did not start"
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs it (Debian chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _published(settings) -> tuple[dict, dict, dict]:
    """A transaction, its score record and alert (a block), as a worker writes them."""
    tx = wire("tx-ui-1", "acct-ui-1", "payee-ui-9", 0, 250_000.0)
    now_ms = int(time.time() * 1000)
    features = [round(0.1 * i, 3) for i in range(len(FEATURE_SPEC.names))]
    features[1] = None
    score = {
        "tx_id": tx["tx_id"],
        "account_id": tx["account_id"],
        "ts_ms": tx["ts_ms"],
        "score": 0.97,
        "decision": "block",
        "rule_hits": [{"rule": "large_wire", "typology": "structuring", "score": 0.9}],
        "model_version": "risk-test",
        "ruleset_version": "aml:4",
        "processed_ms": now_ms,
        "consumed_ms": now_ms,
        "feature_spec": FEATURE_SPEC.label,
        "features": features,
    }
    alert = {
        "alert_id": "al-ui-1",
        "tx_id": tx["tx_id"],
        "account_id": tx["account_id"],
        "ts_ms": tx["ts_ms"],
        "score": 0.97,
        "decision": "block",
        "reasons": [{"code": "LARGE_WIRE", "detail": "a 250,000 EUR wire", "weight": 0.9}],
        "rule_hits": score["rule_hits"],
        "model_version": "risk-test",
        "processed_ms": now_ms,
        "ruleset_version": "aml:4",
    }
    t = settings.topics
    b = settings.kafka_bootstrap
    key = tx["account_id"].encode()
    publish(b, t.transactions, [(key, json.dumps(tx).encode())])
    publish(b, t.scores, [(key, json.dumps(score).encode())])
    publish(b, t.alerts, [(key, json.dumps(alert).encode())])
    return tx, score, alert


BOX = [20, 30, 40, 24]  # x, y, w, h in the frame's pixels


def _camera(settings) -> dict:
    """Three frames of one camera and an inspection alert pointing at the middle one."""
    img = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))  # a grey ramp
    now_ms = int(time.time() * 1000)
    records = []
    for seq in (10, 11, 12):
        key, value, headers = encode_frame(Frame("cam-ui", seq, now_ms + seq, img), "png")
        records.append((key, value, headers))
    publish(settings.kafka_bootstrap, settings.topics.frames, records)
    alert = {
        "alert_id": "ins-ui-1",
        "camera_id": "cam-ui",
        "seq_start": 8,
        "seq_end": 15,
        "ts_ms": now_ms + 11,
        "score": 0.93,
        "bbox": BOX,
        "model_version": "inspection-test",
        "ref_seq": 11,
        "cell": 3,
        "processed_ms": now_ms + 50,
    }
    topic = settings.topics.inspection_alerts
    publish(settings.kafka_bootstrap, topic, [(b"cam-ui", json.dumps(alert).encode())])
    return alert


def test_the_console_shows_a_case_and_its_disposition_lands_on_the_labels_topic(
    settings, console_url, browser
):
    tx, _score, alert = _published(settings)
    inspection = _camera(settings)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(console_url)
    row = page.locator(f'tr[data-account="{tx["account_id"]}"]')
    row.wait_for(timeout=30_000)
    row.click()
    case = page.locator('[data-testid="case"]')
    case.get_by_text("LARGE_WIRE: a 250,000 EUR wire").wait_for(timeout=10_000)
    case.locator('[data-testid="features"] summary').click()  # folded by default
    features = case.locator('[data-testid="features"]').inner_text()
    assert (
        f"{FEATURE_SPEC.names[0]}: 0.000" in features and f"{FEATURE_SPEC.names[1]}: –" in features
    )
    assert "large_wire (structuring, 0.9)" in case.inner_text()

    thumb = page.locator(f'[data-alert="{inspection["alert_id"]}"] img')
    thumb.wait_for(timeout=30_000)
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-case.png"), full_page=True)
    page.locator(f'[data-testid="fraud-{tx["tx_id"]}"]').click()
    case.locator('[data-testid="disposition"]').get_by_text("fraud").wait_for(timeout=10_000)
    summary = page.locator('[data-testid="summary"]')
    summary.get_by_text("1 alert · 0 open cases").wait_for(timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    assert errors == []

    labels = collect(
        settings.kafka_bootstrap, settings.topics.labels, lambda got: len(got) >= 1, 30
    )
    assert len(labels) == 1
    label = labels[0]
    assert {k: label[k] for k in ("tx_id", "label", "account_id", "counterparty_id")} == {
        "tx_id": tx["tx_id"],
        "label": 1,
        "account_id": tx["account_id"],
        "counterparty_id": tx["counterparty_id"],
    }
    assert label["source"] == "analyst" and label["tx_ts_ms"] == tx["ts_ms"]
    assert alert["tx_id"] == label["tx_id"]


def test_the_thumbnail_is_the_alerts_frame_with_its_box_drawn(settings, console_url):
    alert = _camera(settings)
    url = f"{console_url}/api/thumb/{alert['alert_id']}.png"
    deadline = time.monotonic() + 30
    while True:
        try:
            png = urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "no thumbnail"
            time.sleep(0.3)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (96, 128, 3)
    x, y, w, h = BOX
    red = (img[:, :, 2] > 200) & (img[:, :, 0] < 60) & (img[:, :, 1] < 60)
    assert red[y, x + w // 2] and red[y + h - 1, x + w // 2]  # top and bottom edges
    assert red[y + h // 2, x] and red[y + h // 2, x + w - 1]  # left and right edges
    assert not red[y + h // 2, x + w // 2]  # inside: the frame itself
    ramp = np.linspace(0, 255, 128).astype(np.uint8)
    assert abs(int(img[5, 100, 0]) - int(ramp[100])) <= 1  # the grey ramp, untouched
