"""Model releases: signing, chunking, assembly and every reason a worker refuses one."""

from __future__ import annotations

import hashlib
import hmac
import json

import numpy as np
import pytest
import torch

from models.registry import (
    Assembler,
    Refusal,
    Release,
    ReleaseError,
    build_release,
    release_messages,
    serve_release,
)
from models.serving import ClipScorer
from models.video import VideoConfig, VideoNet, make_clips, save_video_model
from streams.sources.camera import TRAIN_TEXTURES
from tests.releases import repacked, resigned

KEY = b"test-key"
CFG = VideoConfig(size=32, camera_size=32, frames=4, d=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = VideoNet(CFG).eval()
    clips = make_clips(4, CFG, TRAIN_TEXTURES, 1).clips
    return save_video_model(net, CFG, tmp_path_factory.mktemp("models"), clips, {"auroc": 0.5})


def _feed(assembler, messages, ts_ms=0):
    out = []
    for offset, (key, value, headers) in enumerate(messages):
        out += assembler.add(key.encode(), value, headers, offset, ts_ms, now_s=0.0)
    return out


def _any_clip_spec(spec):
    if len(spec["clip"]) != 5:
        raise ReleaseError("not a clip")


def test_a_release_round_trips_through_its_records_and_serves(model_dir):
    release = build_release(model_dir, KEY, chunk_bytes=4096)
    messages = release_messages(release)
    size = release.manifest["size"]
    assert release.manifest["chunks"] == -(-size // 4096) == len(messages) - 1 > 1
    assert all(len(v) <= 4096 for _k, v, _h in messages[1:])
    # the manifest's digest is the payload's, computed here independently
    assert release.manifest["sha256"] == hashlib.sha256(release.payload).hexdigest()
    (got,) = _feed(Assembler(KEY), messages, ts_ms=1234)
    assert isinstance(got, Release) and got.published_ms == 1234
    assert got.version == model_dir.name and got.payload == release.payload
    scorer = serve_release(got, _any_clip_spec)
    # it scores what the model directory's own scorer scores
    x = np.random.default_rng(1).random((3, 1, 4, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(scorer.score(x)[0], ClipScorer.load(model_dir).score(x)[0])
    # the signature is plain HMAC-SHA256 over the canonical manifest: an outside check
    body = {k: v for k, v in got.manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert got.manifest["signature"] == hmac.new(KEY, canonical, hashlib.sha256).hexdigest()


def test_releases_of_other_models_are_skipped(model_dir):
    messages = release_messages(build_release(model_dir, KEY))
    assert _feed(Assembler(KEY, names={"risk"}), messages) == []


def test_a_release_signed_with_another_key_is_refused(model_dir):
    messages = release_messages(build_release(model_dir, b"someone-else"))
    (refusal,) = _feed(Assembler(KEY), messages)  # the chunks are then skipped silently
    assert isinstance(refusal, Refusal) and "signature" in refusal.reason


def test_a_tampered_manifest_is_refused(model_dir):
    key, value, headers = release_messages(build_release(model_dir, KEY))[0]
    manifest = json.loads(value)
    manifest["golden"]["tolerance"] = 1.0  # anything changed breaks the signature
    (refusal,) = _feed(Assembler(KEY), [(key, json.dumps(manifest).encode(), headers)])
    assert "signature" in refusal.reason


def test_a_tampered_chunk_is_refused(model_dir):
    messages = release_messages(build_release(model_dir, KEY, chunk_bytes=4096))
    key, value, headers = messages[2]
    messages[2] = (key, bytes([value[0] ^ 1]) + value[1:], headers)
    (refusal,) = _feed(Assembler(KEY), messages)
    assert "sha256" in refusal.reason


def test_a_truncated_release_is_refused_when_the_next_one_starts_or_it_times_out(model_dir):
    first = release_messages(build_release(model_dir, KEY, chunk_bytes=4096))
    second = release_messages(build_release(model_dir, KEY, chunk_bytes=8192))
    assembler = Assembler(KEY, timeout_s=30)
    got = _feed(assembler, first[:-1] + second)
    assert isinstance(got[0], Refusal) and "truncated" in got[0].reason
    assert f"{len(first) - 2} of {len(first) - 1} chunks" in got[0].reason
    assert isinstance(got[1], Release)  # the next one still assembles
    assert _feed(assembler, first[:-1]) == []  # waiting for its last chunk...
    assert assembler.expire(now_s=10.0) == []
    (late,) = assembler.expire(now_s=31.0)  # ... until the timeout
    assert "truncated" in late.reason
    assert _feed(assembler, first[-1:]) == []  # refused already: counted once
    (orphan,) = _feed(Assembler(KEY), first[-1:])
    assert "without its manifest" in orphan.reason


def test_an_unreadable_manifest_is_refused(model_dir):
    key, _value, headers = release_messages(build_release(model_dir, KEY))[0]
    (refusal,) = _feed(Assembler(KEY), [(key, b"{not json", headers)])
    assert "unreadable" in refusal.reason


def test_a_release_for_other_inputs_is_refused_before_loading(model_dir):
    release = build_release(model_dir, KEY)
    wrong = resigned(release, KEY, input_spec={"clip": [None, 3, 4, 32, 32]})

    def one_channel(spec):
        if spec["clip"][1] != 1:
            raise ReleaseError("not one channel")

    with pytest.raises(ReleaseError, match="one channel"):
        serve_release(wrong, one_channel)


def test_a_release_that_fails_parity_on_its_golden_batch_is_refused(model_dir, tmp_path):
    # the publisher recorded the outputs of another model: the worker computes different ones
    torch.manual_seed(5)
    other = save_video_model(
        VideoNet(CFG).eval(), CFG, tmp_path, make_clips(2, CFG, TRAIN_TEXTURES, 2).clips, {}
    )
    golden = build_release(other, KEY).files()["golden.npz"]
    bad = repacked(build_release(model_dir, KEY), KEY, **{"golden.npz": golden})
    with pytest.raises(ReleaseError, match="parity failed"):
        serve_release(bad, _any_clip_spec)


def test_a_release_onnx_runtime_cannot_load_is_refused(model_dir):
    bad = repacked(build_release(model_dir, KEY), KEY, **{"clip.onnx": b"not an onnx graph"})
    with pytest.raises(ReleaseError, match="ONNX Runtime cannot load"):
        serve_release(bad, _any_clip_spec)
