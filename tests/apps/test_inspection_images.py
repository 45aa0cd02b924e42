"""The inspection model from a user's own images, as a user runs it: ``vigil train
inspection --images`` writes a model the worker loads, ``vigil publish frames --images``
puts the user's parts on the camera, ``vigil bench inspection-data`` reports the
literature's measures; bad folders are clear errors and unreadable files are listed."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.models.test_images import TILES, needs_tiles
from vigil.apps.cli import app
from vigil.models.serving import ClipScorer, read_manifest
from vigil.streams.sources.camera import draw_defect, texture

runner = CliRunner()
SMALL = ["--clips", "40", "--epochs", "1", "--size", "64"]


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    """A line's photographs: 14 defect-free parts (grain texture, 90x140 pixels, some in
    colour), 3 scratched and 3 pitted ones with masks, and a file that is no image."""
    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(0)
    for i in range(14):
        grey = texture("grain", 90, 140, rng).astype(np.uint8)
        image = cv2.merge([grey, grey, grey]) if i % 3 == 0 else grey
        (root / "good").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "good" / f"g{i}.jpg"), image)
    for kind in ("scratch", "pit"):
        (root / kind).mkdir()
        for i in range(3):
            tex = texture("grain", 90, 140, rng)
            before = tex.copy()
            draw_defect(tex, kind, rng)
            cv2.imwrite(str(root / kind / f"{kind}{i}.png"), np.clip(tex, 0, 255).astype(np.uint8))
            mask = (np.abs(tex - before) > 5).astype(np.uint8) * 255
            cv2.imwrite(str(root / kind / f"{kind}{i}_mask.png"), mask)
    (root / "good" / "notes.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="module")
def images_model(parts_dir, tmp_path_factory):
    """`vigil train inspection --images` on the parts folder: (models dir, CLI result)."""
    out = tmp_path_factory.mktemp("models")
    args = ["train", "inspection", "--images", str(parts_dir), *SMALL, "--camera-size", "64"]
    return out, runner.invoke(app, [*args, "--out", str(out), "--json"])


def test_train_from_images_writes_a_model_the_worker_loads(images_model):
    out, result = images_model
    assert result.exit_code == 0, result.output
    assert "left out" in result.output and "notes.png" in result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    directory = next((out / "inspection").iterdir())
    scorer = ClipScorer.load(directory)  # what the worker does
    manifest = read_manifest(directory)
    trained_on = manifest["trained_on"]
    assert trained_on["mode"] == "supervised"  # the folder has labelled defects
    # 70 % of each kind for training, a tenth of the defect-free training images held out
    # for the threshold: 14 good -> 8 + 1, 5 to test; 3 of each kind -> 2, 1 to test
    assert trained_on["train"] == {"good": 8, "pit": 2, "scratch": 2}
    assert trained_on["validation"] == {"good": 1}
    assert trained_on["test"] == {"good": 5, "pit": 1, "scratch": 1}
    assert scorer.threshold == manifest["threshold"] == report["threshold"]
    assert 0 <= report["auroc"] <= 1 and report["images"] == 7
    assert set(report["recall_by_kind_at_0.01_false_alarms"]) == {"pit", "scratch"}


def test_normal_only_trains_on_defect_free_images_alone(parts_dir, tmp_path):
    good = tmp_path / "line"
    shutil.copytree(parts_dir / "good", good / "ok")
    args = ["train", "inspection", "--images", str(good), *SMALL, "--camera-size", "64"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(next((tmp_path / "m" / "inspection").iterdir()))
    assert manifest["trained_on"]["mode"] == "normal-only"
    assert manifest["trained_on"]["test"] == {"good": 3}  # 20 % of the 14 readable
    report = json.loads(result.output.strip().splitlines()[-1])
    # no real defect to test on: the false alarms, and the measures on painted copies
    assert (report["images"], report["defective"]) == (3, 0) and "auroc" not in report
    assert 0 <= report["false_alarms_at_threshold"] <= 1
    synthetic = report["synthetic_defects"]
    assert (synthetic["images"], synthetic["defective"]) == (6, 3)
    assert 0 <= synthetic["auroc"] <= 1 and synthetic["located_images"] == 3


def test_bad_image_folders_and_options_are_clear_errors(parts_dir, tmp_path):
    only_defects = tmp_path / "defects"
    shutil.copytree(parts_dir / "scratch", only_defects / "scratch")
    cases = [
        (["--images", str(only_defects)], "no defect-free images"),
        (["--images", str(tmp_path / "absent")], "not a folder of images"),
        (["--images", str(parts_dir), "--publish"], "vigil models publish"),
        (["--images", str(parts_dir), "--mode", "half"], "--mode is one of"),
        (["--mode", "supervised"], "--mode is one of"),
    ]
    for extra, said in cases:
        result = runner.invoke(app, ["train", "inspection", *SMALL, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert said in " ".join(result.output.split()), (extra, result.output)


@pytest.mark.integration
def test_the_worker_serves_a_model_trained_from_images_on_the_users_parts(
    settings, monkeypatch, tmp_path, parts_dir, images_model
):
    """End to end on the embedded broker: the user's parts on the camera (vigil publish
    frames --images), the worker classifying their clips with the model trained from the
    images; every clip's score equals the worker's pipeline run here on the same frames."""
    import itertools

    from tests.apps.helpers import collect
    from tests.conftest import worker_env
    from vigil.apps.process import WorkerProcess
    from vigil.models.inspection.images import ImageParts, load_parts, scan_images
    from vigil.streams.frames import encode_frame
    from vigil.streams.inspection import InspectionPipeline
    from vigil.streams.schemas import RawRecord
    from vigil.streams.sources.camera import CameraConfig, CameraSimulator

    out, trained = images_model
    assert trained.exit_code == 0, trained.output
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    env = worker_env(settings) | {"VIGIL_MODEL_DIR": str(out)}
    with WorkerProcess("inspection", env, tmp_path / "worker.log") as worker:
        args = ["publish", "frames", "--images", str(parts_dir), "--fps", "200"]
        sent = runner.invoke(app, [*args, "--seconds", "1", "--size", "64", "--defect-rate", "0.5"])
        assert sent.exit_code == 0, sent.output
        clips = collect(
            settings.kafka_bootstrap,
            settings.topics.inspection_clips,
            lambda got: len(got) >= (200 - 8) // 4 + 1,
            alive=lambda: worker.running,
        )
    directory = next((out / "inspection").iterdir())
    version = read_manifest(directory)["version"]
    assert len(clips) == 49 and {c["model_version"] for c in clips} == {version}
    # the reference: the same camera (seeded) on the same images, through the pipeline
    found = scan_images(parts_dir)
    parts = ImageParts(load_parts(found.images, []), order="line")
    # each image is what the camera sees of a part: it fills the 64-pixel frame
    config = CameraConfig(seed=0, size=64, fps=200, part_px=64, gap_px=24, defect_rate=0.5)
    shots = itertools.islice(CameraSimulator(config, parts).frames("cam-0", 0), 200)
    records = [encode_frame(s.frame, "png") for s in shots]
    raw = [RawRecord("f", 0, i, k, v, tuple(h)) for i, (k, v, h) in enumerate(records)]
    want = InspectionPipeline(ClipScorer.load(directory)).process(raw, 0).clips
    want_scores = {json.loads(v)["seq_start"]: json.loads(v)["score"] for _k, v in want}
    assert {c["seq_start"]: pytest.approx(c["score"], abs=1e-6) for c in clips} == want_scores


@pytest.mark.integration
def test_publish_frames_puts_the_users_parts_on_the_camera(
    settings, monkeypatch, tmp_path, parts_dir
):
    from vigil.apps.clients import read_messages
    from vigil.streams.frames import decode_frame

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    labels = tmp_path / "truth.jsonl"
    args = ["publish", "frames", "--images", str(parts_dir), "--fps", "400", "--seconds", "1"]
    args += ["--size", "64", "--defect-rate", "0.5", "--labels", str(labels)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "notes.png" in result.output and "published 400 frames" in result.output
    frames = [
        decode_frame(m.key(), m.value(), m.headers())
        for m in read_messages(settings.kafka_bootstrap, settings.topics.frames)
    ]
    assert len(frames) == 400 and all(f.image.shape == (64, 64) for f in frames)
    truth = [json.loads(line) for line in labels.read_text().splitlines()]
    # the defects in view are the images' own kinds (none painted on a camera)
    assert {t["defect"] for t in truth} - {None} <= {"scratch", "pit"}
    assert any(t["defect"] for t in truth)


@needs_tiles
def test_bench_inspection_data_reports_the_literatures_measures_on_a_slice():
    args = ["bench", "inspection-data", "--images", str(TILES), "--limit", "12", *SMALL]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["mode"] == "normal-only" and report["images"] == 3 + 5 * 12
    assert set(report["recall_by_kind_at_0.01_false_alarms"]) == {
        "blowhole",
        "break",
        "crack",
        "fray",
        "uneven",
    }
    lo, hi = report["auroc_ci95"]
    assert lo <= report["auroc"] <= hi
    assert report["located_images"] == 60 and 0 <= report["location_accuracy"] <= 1
    assert report["published_auroc_normal_only"]["PatchCore"] == 0.979
    # a 40-clip, one-epoch training can take under 0.05 s (reported as 0.0)
    assert all(report[k] >= 0 for k in ("clips_s", "train_s", "evaluate_s"))


@pytest.mark.integration
def test_calibrate_sets_one_cameras_threshold_from_its_clean_frames_and_releases_it(
    settings, monkeypatch, tmp_path
):
    """The shipped demo model (under the models path) scores 2.4 s of a clean camera
    with textures it never saw; the threshold lets at most 5 % of those clips alert,
    against the same frames scored in this process by the worker's pipeline."""
    import itertools

    from vigil.apps.clients import publish
    from vigil.apps.demo import SHIPPED_DEMO_MODELS
    from vigil.apps.releases import read_releases
    from vigil.models.registry import GOLDEN
    from vigil.models.serving import latest_dir
    from vigil.streams.frames import encode_frame
    from vigil.streams.inspection import InspectionPipeline
    from vigil.streams.schemas import RawRecord
    from vigil.streams.sources.camera import FRESH_TEXTURES, CameraConfig, CameraSimulator

    models = tmp_path / "models"
    shutil.copytree(latest_dir(SHIPPED_DEMO_MODELS, "inspection"), models / "inspection" / "m")
    for name, value in {
        "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VIGIL_NAMESPACE": settings.namespace,
        "VIGIL_STATE_DIR": str(settings.state_dir),
        "VIGIL_MODEL_DIR": str(models),
    }.items():
        monkeypatch.setenv(name, value)
    sim = CameraSimulator(CameraConfig(seed=5, defect_rate=0.0, textures=FRESH_TEXTURES))
    shots = list(itertools.islice(sim.frames("cam-7", 7), 240))
    records = [encode_frame(s.frame, "png") for s in shots]
    assert publish(settings.kafka_bootstrap, settings.topics.frames, records).failed == 0

    args = ["inspection", "calibrate", "--camera", "cam-7", "--seconds", "600"]
    result = runner.invoke(app, [*args, "--false-alarms", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    # the reference: the worker's own pipeline on the same frames, every clip scored
    reference = InspectionPipeline(ClipScorer.load(models / "inspection" / "m"), threshold=1.0)
    raw = [RawRecord("f", 0, i, k, v, tuple(h)) for i, (k, v, h) in enumerate(records)]
    scores = np.array([json.loads(v)["score"] for _k, v in reference.process(raw, 0).clips])
    assert got["clips"] == len(scores) == (240 - 8) // 4 + 1 and got["frames"] == 240
    t = got["threshold"]
    assert (scores >= t).mean() <= 0.05  # at most 5 % alert ...
    assert (scores >= scores[scores < t].max()).mean() > 0.05  # ... and no higher than needed
    before = (scores >= got["threshold_before"]).mean()
    assert got["false_alarms_before"] == pytest.approx(before, abs=1e-4)
    # released, signed (read_releases verifies), with this camera's threshold alone
    log = read_releases(
        settings.kafka_bootstrap, settings.topics.models, settings.release_trusted()
    )
    release = log.latest("inspection")
    assert release is not None and release.version == got["version"] != got["model_version"]
    files = {k: v for k, v in release.files().items() if k != GOLDEN}
    served = ClipScorer.from_bytes(files, release.manifest["model"])
    assert served.camera_thresholds == {"cam-7": pytest.approx(t, abs=1e-6)}
    assert release.manifest["model"]["parent_version"] == got["model_version"]

    monkeypatch.setenv("VIGIL_INSPECTION_FALSE_ALARMS", "0.2")  # the setting, as default
    dry = runner.invoke(app, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    said = json.loads(dry.output.strip().splitlines()[-1])
    assert said["version"] is None and said["max_fpr"] == 0.2
    unknown = runner.invoke(app, ["inspection", "calibrate", "--camera", "cam-none"])
    assert unknown.exit_code == 2 and "at least 50" in " ".join(unknown.output.split())


@pytest.mark.integration
def test_record_a_camera_then_train_on_the_recording_and_its_labels(
    settings, monkeypatch, tmp_path
):
    """vigil record frames saves exactly what the camera sent (pixels compared with the
    simulator's frames); the simulator's own labels file turns it into training data."""
    import itertools
    import threading

    from vigil.apps.recording import record_frames
    from vigil.streams.sources.camera import CameraConfig, CameraSimulator

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    out, truth = tmp_path / "rec", tmp_path / "truth.jsonl"
    began, done, got = threading.Event(), threading.Event(), {}

    def record() -> None:
        got["r"] = record_frames(
            settings.kafka_bootstrap,
            settings.topics.frames,
            "cam-0",
            60,
            out,
            should_stop=done.is_set,
            ready=began.set,
        )

    recorder = threading.Thread(target=record)
    recorder.start()
    assert began.wait(30)
    args = ["publish", "frames", "--cameras", "2", "--fps", "400", "--seconds", "1"]
    sent = runner.invoke(
        app, [*args, "--size", "64", "--defect-rate", "0.6", "--labels", str(truth)]
    )
    assert sent.exit_code == 0, sent.output
    index = out / "frames.jsonl"
    for _ in range(300):  # until the recorder has the camera's 400 frames
        if index.exists() and len(index.read_text().splitlines()) >= 400:
            break
        threading.Event().wait(0.1)
    done.set()
    recorder.join(30)
    r = got["r"]
    assert (r.frames, r.undecodable, r.first_seq, r.last_seq) == (400, 0, 0, 399)
    config = CameraConfig(seed=0, size=64, fps=400, part_px=56, gap_px=24, defect_rate=0.6)
    sim = CameraSimulator(config)  # as vigil publish frames made them
    for shot in itertools.islice(sim.frames("cam-0", 0), 0, 400, 37):
        saved = cv2.imread(str(out / "cam-0" / f"{shot.frame.seq:012d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved, shot.frame.image), shot.frame.seq

    models = tmp_path / "models"
    args = ["train", "inspection", "--frames", str(out), "--labels", str(truth), "--epochs", "2"]
    trained = runner.invoke(app, [*args, "--size", "64", "--out", str(models), "--json"])
    assert trained.exit_code == 0, trained.output
    report = json.loads(trained.output.strip().splitlines()[-1])
    clips = report["clips"]
    # (400 - 8) // 4 + 1 = 99 clips, split 70 / 10 / 19 in time
    assert [clips[k]["clips"] for k in ("train", "validation", "test")] == [69, 9, 21]
    assert 0 < clips["train"]["defective"] < 69
    ClipScorer.load(next((models / "inspection").iterdir()))
    missing = runner.invoke(app, ["train", "inspection", "--frames", str(tmp_path)])
    assert missing.exit_code == 2 and "labels" in missing.output


def test_bench_inspection_calibration_reports_before_and_after_per_fresh_texture():
    from vigil.apps.demo import SHIPPED_DEMO_MODELS
    from vigil.models.serving import latest_dir

    shipped = latest_dir(SHIPPED_DEMO_MODELS, "inspection")
    args = ["bench", "inspection-calibration", "--model", str(shipped), "--seconds", "3"]
    result = runner.invoke(app, [*args, "--test-clips", "40", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["calibration_clips"] == (300 - 8) // 4 + 1
    assert report["threshold_before"] == pytest.approx(read_manifest(shipped)["threshold"])
    for fresh in ("wood", "terrazzo"):
        before, after = report[fresh]["before"], report[fresh]["after"]
        assert before["threshold"] == report["threshold_before"]
        assert all(0 <= v <= 1 for v in (*before.values(), *after.values()))
        # a higher threshold alerts less often, on clean and defective clips alike
        if after["threshold"] >= before["threshold"]:
            assert after["false_alarms"] <= before["false_alarms"]
            assert after["recall"] <= before["recall"]
