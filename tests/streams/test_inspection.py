"""The inspection pipeline without a broker: dead letters, acknowledgement of frames,
incidents, cross-camera batching and redelivery.

The classifier here is a stand-in (the real one is trained, and tested end to end in
tests/apps/test_inspection_worker.py): it calls a clip defective when most of its pixels
are bright, and the frames are drawn bright exactly on the seqs a test marks, so every
expected alert follows from the test's own marks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vigil.streams.frames import Frame, encode_frame
from vigil.streams.inspection import InspectionPipeline, clip_bbox
from vigil.streams.schemas import RawRecord

SIZE = 32


class BrightClips:
    version = "bright-1"
    frames = 8
    size = SIZE
    grid = 4
    threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.camera_thresholds: dict[str, float] = {}

    def score(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(clips))
        probs = (clips.mean(axis=(1, 2, 3, 4)) > 0.5).astype(np.float64) * 0.9
        return probs, np.full(len(clips), 5)


def _image(seq: int, bright: set[int]) -> np.ndarray:
    rng = np.random.default_rng(seq)
    base = 200 if seq in bright else 50
    return (base + rng.integers(0, 20, (SIZE, SIZE))).astype(np.uint8)


def _record(camera: str, seq: int, bright: set[int] = frozenset(), offset: int = 0) -> RawRecord:
    key, value, headers = encode_frame(
        Frame(camera, seq, 1_767_225_600_000 + 10 * seq, _image(seq, bright)), "png"
    )
    return RawRecord("vigil.frames", 0, offset, key, value, tuple(headers))


def _alerts(result) -> list[dict]:
    return [json.loads(v) for _k, v in result.alerts]


def test_bad_frames_go_to_the_dead_letter_topic_and_are_done():
    pipeline = InspectionPipeline(BrightClips())
    good = _record("cam-0", 0)
    headerless = RawRecord("vigil.frames", 0, 1, b"cam-0", good.value, None)
    garbage = RawRecord("vigil.frames", 0, 2, b"cam-0", b"not a png", good.headers)
    huge = RawRecord("vigil.frames", 0, 3, b"cam-0", b"x" * 1_000_001, good.headers)
    result = pipeline.process([headerless, garbage, huge], consumed_ms=1)
    letters = [json.loads(v) for _k, v in result.dead]
    assert [d["offset"] for d in letters] == [1, 2, 3]
    assert "missing header 'camera_id'" in letters[0]["error"]
    assert "does not decode" in letters[1]["error"]
    assert "over the 1000000-byte limit" in letters[2]["error"]
    assert letters[1]["headers"] and "headers" not in letters[0]
    assert result.done == [headerless, garbage, huge] and pipeline.counters["dlq"] == 3


def test_every_frame_is_done_exactly_once_and_only_when_no_clip_needs_it():
    pipeline = InspectionPipeline(BrightClips(), stride=4)
    records = [_record("cam-0", s, offset=s) for s in range(30)]
    done: list[RawRecord] = []
    for r in records:
        result = pipeline.process([r], consumed_ms=1)
        done += result.done
        held = {f.seq for f in pipeline.cameras["cam-0"].windows.frames}
        # done frames: all seqs below the open window, none of those in it
        assert {d.offset for d in done} == set(range(r.offset + 1)) - held
    assert len(done) == len({id(d) for d in done})  # no frame handed back twice
    assert pipeline.counters["clips"] == 6  # (0..7), (4..11), ..., (20..27)


def test_a_defect_run_is_one_incident_with_one_alert_where_it_starts():
    bright = set(range(20, 44))  # a defect in view for frames 20..43
    pipeline = InspectionPipeline(BrightClips(), stride=4, quiet_clips=2)
    result = pipeline.process([_record("cam-0", s, bright) for s in range(80)], consumed_ms=1)
    scores = [json.loads(v) for _k, v in result.clips]
    positive = [(c["seq_start"], c["seq_end"]) for c in scores if c["score"] >= 0.5]
    # independent reference: half the frames bright (about 210 against 60) is a mean
    # above 0.5 (4 bright: 0.53; 3 bright: 0.45)
    want = [(s, s + 7) for s in range(0, 73, 4) if len(bright & set(range(s, s + 8))) >= 4]
    assert positive == want
    (alert,) = _alerts(result)
    assert (alert["seq_start"], alert["seq_end"]) == want[0]
    assert alert["ref_seq"] == want[0][0] + 4 and alert["camera_id"] == "cam-0"
    assert alert["bbox"] == clip_bbox(5, 4, SIZE, SIZE) == [8, 8, 8, 8]
    assert pipeline.counters["suppressed"] == len(want) - 1
    # a second defect after the incident ended is a second alert
    later = pipeline.process(
        [_record("cam-0", s, set(range(100, 120))) for s in range(80, 140)], consumed_ms=1
    )
    assert [a["seq_start"] for a in _alerts(later)] == [96]  # 96..103: 4 bright


def test_cameras_are_classified_together_in_one_call_and_kept_apart():
    model = BrightClips()
    pipeline = InspectionPipeline(model, stride=4)
    records = [
        _record(cam, s, set(range(10, 16)) if cam == "cam-1" else set())
        for s in range(16)
        for cam in ("cam-0", "cam-1")
    ]
    result = pipeline.process(records, consumed_ms=1)
    assert model.calls == [6]  # 3 clips from each camera, one ONNX call
    assert [(a["camera_id"], a["seq_start"]) for a in _alerts(result)] == [("cam-1", 8)]


def test_out_of_order_frames_cut_the_same_clips_and_late_ones_are_dropped():
    order = [0, 2, 1, 3, 5, 4, 6, 7, 9, 8, 10, 11, 12, 13, 14, 15]
    ordered = InspectionPipeline(BrightClips(), stride=4)
    shuffled = InspectionPipeline(BrightClips(), stride=4)
    a = ordered.process([_record("c", s) for s in range(16)], consumed_ms=1)
    b = shuffled.process([_record("c", s) for s in order], consumed_ms=1)
    assert _ranges(a) == _ranges(b) == [(0, 7), (4, 11), (8, 15)]
    late = shuffled.process([_record("c", 3)], consumed_ms=1)
    assert shuffled.buffer_counts()["late"] == 1 and len(late.done) == 1 and not late.clips


def _ranges(result) -> list[tuple[int, int]]:
    return [(c["seq_start"], c["seq_end"]) for c in map(json.loads, (v for _k, v in result.clips))]


@pytest.mark.parametrize("restart_at", [13, 16, 19, 20])
def test_a_restart_mid_stream_cuts_the_same_clips_and_repeats_alert_ids(restart_at):
    bright = set(range(24, 40))  # first positive clip: 20..27 (4 bright frames)
    first = InspectionPipeline(BrightClips(), stride=4)
    all_records = [_record("c", s, bright) for s in range(60)]
    before = first.process(all_records, consumed_ms=1)
    # A restarted worker resumes at the oldest frame it had not handed back as done, so
    # at the latest at the start of the clip that raised the alert (20): anywhere before
    # it, the same clips are cut and the alert comes again with the same id.
    again = InspectionPipeline(BrightClips(), stride=4)
    after = again.process(all_records[restart_at:], consumed_ms=1)
    assert set(_ranges(after)) <= set(_ranges(before))
    assert _ranges(after)[0][0] == -(-restart_at // 4) * 4  # the next multiple of the stride
    assert [a["alert_id"] for a in _alerts(after)] == [a["alert_id"] for a in _alerts(before)]


def test_without_a_model_clips_are_counted_unscored_and_frames_still_done():
    pipeline = InspectionPipeline(None, stride=4)
    result = pipeline.process([_record("c", s) for s in range(16)], consumed_ms=1)
    assert not result.clips and not result.alerts
    assert pipeline.counters["clips_unscored"] == 3 and len(result.done) == 12


def test_an_idle_camera_releases_frames_held_behind_a_gap():
    pipeline = InspectionPipeline(BrightClips(), stride=4, grace_ms=10_000)
    result = pipeline.process([_record("c", s) for s in [*range(8), *range(9, 20)]], 1)
    assert _ranges(result) == [(0, 7)]  # 8 is missing: 9.. wait within the grace
    flushed = pipeline.expire(idle_s=0.0, consumed_ms=2)
    assert _ranges(flushed) == [(12, 19)]  # 9..11 start no clip (not a stride multiple)
    assert pipeline.buffer_counts()["gaps"] == 1
    assert len(result.done) + len(flushed.done) == 19 - len(pipeline.cameras["c"].windows.frames)


def test_a_cameras_calibrated_threshold_holds_for_it_alone_and_the_setting_overrides_all():
    bright = set(range(0, 40))
    model = BrightClips()  # every clip scores 0.9
    model.camera_thresholds = {"cam-b": 0.95}
    records = [_record(cam, s, bright) for s in range(16) for cam in ("cam-a", "cam-b")]
    alerted = {a["camera_id"] for a in _alerts(InspectionPipeline(model).process(records, 1))}
    assert alerted == {"cam-a"}  # 0.9 >= the model's 0.5, < cam-b's 0.95
    overridden = InspectionPipeline(model, threshold=0.3).process(records, 1)
    assert {a["camera_id"] for a in _alerts(overridden)} == {"cam-a", "cam-b"}
