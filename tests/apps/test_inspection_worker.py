"""The inspection worker end to end on the embedded broker, with a freshly trained
classifier: simulated cameras publish frames, the worker aligns and classifies their
clips and raises alerts where the simulator drew defects, and none on a clean line."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.apps.helpers import collect, get, series, wait_for_log
from tests.conftest import worker_env
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess, free_port
from vigil.apps.releases import publish_release
from vigil.models.inspection import (
    VideoConfig,
    make_clips,
    pick_threshold,
    predict,
    save_video_model,
)
from vigil.models.inspection import train_video as fit
from vigil.models.registry import build_release
from vigil.models.serving import ClipScorer
from vigil.streams.frames import encode_frame
from vigil.streams.inspection import InspectionPipeline
from vigil.streams.schemas import RawRecord
from vigil.streams.sources.camera import TRAIN_TEXTURES, CameraConfig, CameraSimulator

pytestmark = pytest.mark.integration

CFG = VideoConfig(size=64, camera_size=64, epochs=8, seed=2)
FRAMES = 240  # per camera: 2.4 s of line, about 9 parts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    train = make_clips(1200, CFG, TRAIN_TEXTURES, seed=5, belt=True)
    # validation clips as the worker sees them (bare belt included); the threshold lets
    # none of them alert, so that a clean line stays silent with a margin
    check = make_clips(400, CFG, TRAIN_TEXTURES, seed=6, belt=True)
    net = fit(train, CFG, say=lambda _m: None)
    probs, _cells = predict(net, check.clips)
    threshold = pick_threshold(check.labels, probs, max_fpr=0.0)
    root = tmp_path_factory.mktemp("models")
    save_video_model(net, CFG, root / "inspection", check.clips[:4], {}, threshold)
    return root


def _camera(camera: str, index: int, defect_rate: float):
    sim = CameraSimulator(
        CameraConfig(seed=11, size=64, part_px=56, gap_px=24, defect_rate=defect_rate)
    )
    return list(itertools.islice(sim.frames(camera, index), FRAMES))


def _defect_ranges(shots) -> list[tuple[int, int]]:
    """Runs of consecutive seqs with a defect in view (whole, or cut by the frame's edge):
    what an alert must overlap."""
    seqs = [s.frame.seq for s in shots if s.defect is not None or s.partial]
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return [(r[0], r[-1]) for r in runs]


def test_defects_raise_alerts_where_they_are_and_a_clean_line_raises_none(
    settings, tmp_path, model_dir
):
    defective, clean = _camera("cam-0", 0, 1.0), _camera("cam-1", 1, 0.0)
    records = [
        encode_frame(shot.frame, "png")
        for pair in zip(defective, clean, strict=True)
        for shot in pair
    ]
    bad = [(b"cam-0", b"\x89PNG broken", records[0][2])]  # undecodable: the dead-letter topic
    sent = publish(settings.kafka_bootstrap, settings.topics.frames, [*records, *bad])
    assert sent.failed == 0
    port = free_port()
    env = worker_env(settings) | {
        "VIGIL_MODEL_DIR": str(model_dir),
        "VIGIL_INSPECTION_METRICS_PORT": str(port),
    }
    with WorkerProcess("inspection", env, tmp_path / "worker.log") as worker:
        # every clip of both cameras: (240 - 8) // 4 + 1 = 59 each
        clips = collect(
            settings.kafka_bootstrap,
            settings.topics.inspection_clips,
            lambda got: len(got) >= 2 * 59,
            alive=lambda: worker.running,
        )
        alerts = collect(
            settings.kafka_bootstrap, settings.topics.inspection_alerts, lambda _g: False, 2
        )
        dead = collect(settings.kafka_bootstrap, settings.topics.dlq, lambda g: len(g) >= 1)
        # its metrics (refreshed about once a second) count what was published
        deadline = time.monotonic() + 30
        while (got := series(port)).get(("vigil_inspection_frames_total", ())) != len(records):
            assert time.monotonic() < deadline, got
            time.sleep(0.5)
        ready = get(port, "/readyz")
    assert got[("vigil_inspection_clips_total", ())] == 2 * 59
    assert got[("vigil_inspection_alerts_total", ())] == len(alerts)
    assert got[("vigil_inspection_dead_letters_total", (("reason", "invalid"),))] == 1
    assert got[("vigil_inspection_latency_seconds_count", ())] == len(records) + 1
    assert ready[0] == 200 and "model " in ready[1]
    assert len(clips) == 2 * 59
    # the reference: the same frames through the pipeline in this process
    scorer = ClipScorer.load(next((model_dir / "inspection").iterdir()))
    reference = InspectionPipeline(scorer)
    raw = [RawRecord("f", 0, i, k, v, tuple(h)) for i, (k, v, h) in enumerate(records)]
    want = reference.process(raw, consumed_ms=0)
    want_scores = {
        (c["camera_id"], c["seq_start"]): c["score"] for c in map(json.loads, _values(want.clips))
    }
    got_scores = {(c["camera_id"], c["seq_start"]): c["score"] for c in clips}
    assert got_scores.keys() == want_scores.keys()
    for key, score in want_scores.items():
        assert got_scores[key] == pytest.approx(score, abs=1e-6), key
    want_alerts = [json.loads(v) for v in _values(want.alerts)]
    assert sorted(a["alert_id"] for a in alerts) == sorted(a["alert_id"] for a in want_alerts)
    # against the simulator's ground truth
    ranges = _defect_ranges(defective)
    assert len(ranges) >= 4 and not _defect_ranges(clean)
    on_defective = [a for a in alerts if a["camera_id"] == "cam-0"]
    assert on_defective, "no alert for a line where every part has a defect"
    for a in on_defective:  # each alert's clip shows a defect in view
        assert any(a["seq_start"] <= hi and a["seq_end"] >= lo for lo, hi in ranges), a
        assert a["model_version"] == scorer.version and len(a["bbox"]) == 4
    detected = [
        r for r in ranges if any(a["seq_start"] <= r[1] and a["seq_end"] >= r[0] for a in alerts)
    ]
    assert len(detected) >= len(ranges) // 2
    assert not [a for a in alerts if a["camera_id"] == "cam-1"], "alert on a clean line"
    assert [d["offset"] for d in dead if d["source_topic"] == settings.topics.frames]
    assert "does not decode" in dead[0]["error"]


def _values(items):
    return (v for _k, v in items)


def test_a_worker_without_a_model_serves_one_released_on_the_topic(settings, tmp_path, model_dir):
    directory = next((model_dir / "inspection").iterdir())
    key = settings.release_signer()
    env = worker_env(settings) | {"VIGIL_MODEL_DIR": str(tmp_path / "no-models")}
    log = tmp_path / "worker.log"
    with WorkerProcess("inspection", env, log) as worker:
        assert wait_for_log(log, "clips are cut but not classified", lambda: worker.running)
        publish_release(
            settings.kafka_bootstrap, settings.topics.models, build_release(directory, key)
        )
        served = wait_for_log(
            log, rf"inspection release {directory.name} .* serving", lambda: worker.running
        )
        assert served, "the release was not installed"
        records = [encode_frame(shot.frame, "png") for shot in _camera("cam-0", 0, 1.0)[:120]]
        publish(settings.kafka_bootstrap, settings.topics.frames, records)
        clips = collect(
            settings.kafka_bootstrap,
            settings.topics.inspection_clips,
            lambda got: len(got) >= (120 - 8) // 4 + 1,
            alive=lambda: worker.running,
        )
    assert {c["model_version"] for c in clips} == {directory.name}
    reference = InspectionPipeline(ClipScorer.load(directory))
    raw = [RawRecord("f", 0, i, k, v, tuple(h)) for i, (k, v, h) in enumerate(records)]
    want = {
        c["seq_start"]: c["score"]
        for c in map(json.loads, _values(reference.process(raw, consumed_ms=0).clips))
    }
    assert {c["seq_start"]: pytest.approx(c["score"], abs=1e-6) for c in clips} == want
