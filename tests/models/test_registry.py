"""Model releases: signing, chunking, assembly and every reason a worker refuses one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.releases import repacked, resigned
from vigil.models.inspection import VideoConfig, VideoNet, make_clips, save_video_model
from vigil.models.registry import (
    Assembler,
    Limits,
    Refusal,
    Release,
    ReleaseError,
    build_release,
    release_messages,
    resign,
    serve_release,
)
from vigil.models.serving import ClipScorer
from vigil.models.signing import SigningKey, TrustedKeys
from vigil.streams.sources.camera import TRAIN_TEXTURES

KEY = SigningKey.generate()  # the publisher's
TRUSTED = TrustedKeys([KEY.public_key()])  # what the workers hold
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
    (got,) = _feed(Assembler(TRUSTED), messages, ts_ms=1234)
    assert isinstance(got, Release) and got.published_ms == 1234
    assert got.version == model_dir.name and got.payload == release.payload
    scorer = serve_release(got, _any_clip_spec)
    # it scores what the model directory's own scorer scores
    x = np.random.default_rng(1).random((3, 1, 4, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(scorer.score(x)[0], ClipScorer.load(model_dir).score(x)[0])
    # the signature is plain Ed25519 over the canonical manifest: an outside check
    body = {k: v for k, v in got.manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = got.manifest["signature"]
    assert sig["alg"] == "ed25519" and sig["key_id"] == KEY.key_id
    raw = KEY.public_key().public_bytes_raw()
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(sig["value"]), canonical)


def test_releases_of_other_models_are_skipped(model_dir):
    messages = release_messages(build_release(model_dir, KEY))
    assert _feed(Assembler(TRUSTED, names={"risk"}), messages) == []


def test_a_release_signed_with_another_key_is_refused(model_dir):
    messages = release_messages(build_release(model_dir, SigningKey.generate()))
    (refusal,) = _feed(Assembler(TRUSTED), messages)  # the chunks are then skipped silently
    assert isinstance(refusal, Refusal) and "does not trust" in refusal.reason


def test_a_tampered_manifest_is_refused(model_dir):
    key, value, headers = release_messages(build_release(model_dir, KEY))[0]
    manifest = json.loads(value)
    manifest["golden"]["tolerance"] = 1.0  # anything changed breaks the signature
    (refusal,) = _feed(Assembler(TRUSTED), [(key, json.dumps(manifest).encode(), headers)])
    assert "signature" in refusal.reason


def test_a_tampered_chunk_is_skipped_and_the_release_never_completes(model_dir):
    messages = release_messages(build_release(model_dir, KEY, chunk_bytes=4096))
    key, value, headers = messages[2]
    messages[2] = (key, bytes([value[0] ^ 1]) + value[1:], headers)
    assembler = Assembler(TRUSTED, timeout_s=30)
    assert _feed(assembler, messages) == [] and assembler.skipped == 1
    (late,) = assembler.expire(now_s=31.0)
    assert "truncated" in late.reason


def test_a_truncated_release_is_refused_when_the_next_one_starts_or_it_times_out(model_dir):
    first = release_messages(build_release(model_dir, KEY, chunk_bytes=4096))
    second = release_messages(build_release(model_dir, KEY, chunk_bytes=8192))
    assembler = Assembler(TRUSTED, timeout_s=30)
    got = _feed(assembler, first[:-1] + second)
    assert isinstance(got[0], Refusal) and "truncated" in got[0].reason
    assert f"{len(first) - 2} of {len(first) - 1} chunks" in got[0].reason
    assert isinstance(got[1], Release)  # the next one still assembles
    assembler = Assembler(TRUSTED, timeout_s=30)
    assert _feed(assembler, first[:-1]) == []  # waiting for its last chunk...
    assert assembler.expire(now_s=10.0) == []
    (late,) = assembler.expire(now_s=31.0)  # ... until the timeout
    assert "truncated" in late.reason
    assert _feed(assembler, first[-1:]) == []  # refused already: counted once
    (orphan,) = _feed(Assembler(TRUSTED), first[-1:])
    assert "without its manifest" in orphan.reason


def test_an_unreadable_manifest_is_refused(model_dir):
    key, _value, headers = release_messages(build_release(model_dir, KEY))[0]
    (refusal,) = _feed(Assembler(TRUSTED), [(key, b"{not json", headers)])
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
    with pytest.raises(ReleaseError, match="clip.onnx is not an ONNX model"):
        serve_release(bad, _any_clip_spec)


def test_a_release_whose_graph_declares_too_much_is_refused_before_onnx_runtime(model_dir):
    import onnx
    from onnx import numpy_helper

    release = build_release(model_dir, KEY)
    graph = onnx.load_model_from_string(release.files()["clip.onnx"]).graph
    constants = [a.t for n in graph.node for a in n.attribute if a.type == a.TENSOR]
    tensors = [*graph.initializer, *constants]
    declared = sum(numpy_helper.to_array(t).nbytes for t in tensors)  # the arrays themselves
    with pytest.raises(ReleaseError, match=f"declares {declared} bytes of initializers"):
        serve_release(release, _any_clip_spec, Limits(release_bytes=declared - 1))
    serve_release(release, _any_clip_spec, Limits(release_bytes=declared + 10_000))
    graph = onnx.load_model_from_string(release.files()["clip.onnx"])
    onnx.external_data_helper.set_external_data(graph.graph.initializer[0], "/etc/passwd")
    graph.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    external = repacked(release, KEY, **{"clip.onnx": graph.SerializeToString()})
    with pytest.raises(ReleaseError, match="refers to external data"):
        serve_release(external, _any_clip_spec)


# ------------------------------------------------ replay, downgrade, injection, size, format


def test_a_release_replayed_byte_for_byte_is_refused(model_dir):
    messages = release_messages(build_release(model_dir, KEY))
    assembler = Assembler(TRUSTED)
    (got,) = _feed(assembler, messages)
    assert isinstance(got, Release)
    (refusal, *rest) = _feed(assembler, messages)  # appended again by someone without a key
    assert "replayed or older release" in refusal.reason and rest == []


def test_an_older_release_after_a_newer_is_refused_unless_it_is_a_signed_rollback(model_dir):
    old = build_release(model_dir, KEY)
    new = build_release(model_dir, KEY, chunk_bytes=8192)
    assembler = Assembler(TRUSTED)
    assert isinstance(_feed(assembler, release_messages(new))[0], Release)
    (refusal,) = _feed(assembler, release_messages(old)[:1])
    assert "replayed or older release" in refusal.reason
    rollback = resign(old, KEY, rollback=True)
    (got,) = _feed(assembler, release_messages(rollback))
    assert isinstance(got, Release) and got.manifest["rollback"] is True
    assert got.payload == old.payload


def test_records_injected_into_a_release_do_not_spoil_it(model_dir):
    messages = release_messages(build_release(model_dir, KEY, chunk_bytes=4096))
    key, value, headers = messages[0]
    unsigned = json.loads(value)
    del unsigned["signature"]
    garbage_chunk = (key, b"x" * 4096, messages[1][2])  # the right headers, other bytes
    injected = [messages[0], (key, json.dumps(unsigned).encode(), headers), garbage_chunk]
    assembler = Assembler(TRUSTED)
    got = _feed(assembler, injected + messages[1:])
    assert [type(g) for g in got] == [Refusal, Release]  # the unsigned one, then the real one
    assert "not an ed25519 signature" in got[0].reason and assembler.skipped == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"size": 10**12}, "at most"),
        ({"chunk_bytes": 10**8}, "chunks of at most"),
        ({"chunks": 10**6}, "cannot hold"),
        ({"chunk_sha256": []}, "one chunk_sha256 per chunk"),
        ({"sequence": "9"}, "replayed or older"),
    ],
)
def test_a_release_over_the_limits_is_refused_from_its_manifest(model_dir, changes, reason):
    release = resign(build_release(model_dir, KEY), KEY, **changes)  # signed: only limits bite
    limits = Limits(release_bytes=10**9)
    (refusal,) = _feed(Assembler(TRUSTED, limits=limits), release_messages(release)[:1])
    assert reason in refusal.reason


def test_a_format_1_hmac_release_is_refused(model_dir):
    key, value, headers = release_messages(build_release(model_dir, KEY))[0]
    manifest = json.loads(value)
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    manifest["signature"] = hmac.new(b"vigil-dev-key-change-me", canonical, "sha256").hexdigest()
    (refusal,) = _feed(Assembler(TRUSTED), [(key, json.dumps(manifest).encode(), headers)])
    assert "not an ed25519 signature" in refusal.reason
