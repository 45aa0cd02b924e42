"""Model releases on ``vigil.models``: a model directory as a signed, chunked release.

Wire format (one partition, key = the model name, in this order):

1. the **manifest**, JSON: ``name, version, created_ms, sha256, size, format, bits,
   input_spec, metrics, parent_version`` (DESIGN.md), plus ``files`` (``name: [offset,
   size, sha256]`` inside the payload), ``chunks``, ``chunk_bytes``, ``golden`` (the
   parity batch's tolerance), ``model`` (the directory's own manifest), ``release_format``
   and ``signature``. Headers: ``vigil-release: <version>``, ``vigil-part: manifest``.
2. ``chunks`` records of the **payload**: the files concatenated in manifest order, the
   golden batch (``golden.npz``) last. Headers: ``vigil-release``, ``vigil-part: <index>``.

``signature`` is HMAC-SHA256, keyed with ``VIGIL_HMAC_KEY``, over the manifest's canonical
JSON without it (sorted keys, no spaces); the manifest holds the payload's sha256, so the
signature covers every byte. The golden batch holds inputs and the outputs the publisher's
ONNX Runtime computed: a worker serves a release only if it reproduces them.

A worker reads the topic in order through an ``Assembler``; a release is refused when its
signature or hash is wrong, a chunk is missing (the next manifest of the same model came
first, or it stayed incomplete past the timeout), its input spec is not the worker's, or
parity fails. Rollback is publishing an older release again (same bytes, same signature).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.serving import (
    ClipScorer,
    HybridScorer,
    ModelError,
    check_feature_spec,
    read_files,
    read_manifest,
    scorer_for,
)

__all__ = [
    "CHUNK_BYTES",
    "Assembler",
    "Refusal",
    "Release",
    "ReleaseError",
    "build_release",
    "pack_files",
    "release_messages",
    "serve_release",
]

CHUNK_BYTES = 256 * 1024  # well under Kafka's default 1 MB message limit
MAX_MANIFEST_BYTES = 256 * 1024  # read before anything is parsed (real ones: a few KB)
RELEASE_FORMAT = 1
GOLDEN = "golden.npz"
GOLDEN_ROWS = {"onnx:gbdt+nn": 256, "onnx:clip-classifier": 4}
# the outputs are probabilities; the same graph on another ORT build or CPU may differ in
# the last float32 bits, never by this much
GOLDEN_TOLERANCE = 1e-4
HEADER_RELEASE, HEADER_PART = "vigil-release", "vigil-part"


class ReleaseError(Exception):
    """A release that must not serve: the reason is logged and counted by the worker."""


@dataclass(frozen=True)
class Release:
    manifest: dict
    payload: bytes
    published_ms: int = 0  # broker timestamp of its last record: when it was published

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def files(self) -> dict[str, bytes]:
        """The files, each checked against its sha256 (once: the result is kept)."""
        return dict(self._files)

    @functools.cached_property
    def _files(self) -> dict[str, bytes]:
        out = {}
        for name, (offset, size, digest) in self.manifest["files"].items():
            data = self.payload[offset : offset + size]
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise ReleaseError(f"file {name} of {self.version} does not match its sha256")
            out[name] = data
        return out

    def golden(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(io.BytesIO(self.files()[GOLDEN])) as npz:
            return _as_input(npz["inputs"]), npz["outputs"]


def pack_files(files: dict[str, bytes]) -> tuple[dict[str, list], bytes]:
    """The payload of a release (the files concatenated) and its index: name -> offset,
    size, sha256."""
    index, offset = {}, 0
    for name, data in files.items():
        index[name] = [offset, len(data), hashlib.sha256(data).hexdigest()]
        offset += len(data)
    return index, b"".join(files.values())


def signature(manifest: dict, key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _as_input(x: np.ndarray) -> np.ndarray:
    # clips travel as float16 (or grey levels: k/255), features as float32; both sides
    # score exactly these values
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def outputs(scorer: HybridScorer | ClipScorer, inputs: np.ndarray) -> np.ndarray:
    """What parity compares: the risk score per row, the defect probability per clip."""
    if isinstance(scorer, ClipScorer):
        return np.asarray(scorer.score(inputs)[0], dtype=np.float64)
    return np.asarray(scorer.score_batch(inputs), dtype=np.float64)


def _input_spec(model: dict) -> dict:
    if model["format"] == "onnx:gbdt+nn":
        from streams.features import FEATURE_SPEC

        return {"features": [None, len(FEATURE_SPEC.names)], "feature_spec": model["feature_spec"]}
    return {"clip": model["input"]["clip"]}


def _golden_inputs(model: dict, rows: int, seed: int = 11) -> np.ndarray:
    """A deterministic parity batch of realistic inputs when the publisher has no recorded
    one: simulated clips in the model's input size (float16), or feature rows of generated
    transactions, half of them positive. Random inputs would not do: a model's outputs
    saturate on them, and two different models then agree."""
    if model["format"] == "onnx:clip-classifier":
        from models.video import VideoConfig, make_clips
        from streams.sources.camera import TRAIN_TEXTURES

        cfg = VideoConfig(**model["config"])
        return make_clips(rows, cfg, TRAIN_TEXTURES, seed=seed).clips.astype(np.float16)
    from models.tabular import history_from_generator

    history = history_from_generator(days=2, seed=seed, accounts=60)
    positive = np.flatnonzero(history.labels == 1)[: rows // 2]
    negative = np.flatnonzero(history.labels == 0)[: rows - len(positive)]
    return history.features[np.concatenate([positive, negative])].astype(np.float32)


def build_release(
    directory: Path,
    key: bytes,
    golden_inputs: np.ndarray | None = None,
    replaces: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Release:
    """A signed release of the model in ``directory`` (verified against its manifest first).
    The golden outputs come from this machine's ONNX Runtime on ``golden_inputs`` (clips:
    float16 or uint8 grey levels; feature rows: float32; default: a deterministic batch of
    simulated, realistic inputs). ``replaces``:
    the version serving when it was published (``parent_version`` is the model's own
    parent: the float model a quantized one was made from)."""
    model = read_manifest(directory)
    files = read_files(directory, model)
    if model.get("format") == "onnx:gbdt+nn":
        from streams.features import FEATURE_SPEC

        what = f"{directory}: model {model['version']}"
        check_feature_spec(model.get("feature_spec"), FEATURE_SPEC.label, what)
    scorer = scorer_for(files, model)
    if golden_inputs is None:
        golden_inputs = _golden_inputs(model, GOLDEN_ROWS[model["format"]])
    try:
        expected = outputs(scorer, _as_input(golden_inputs))
    except Exception as exc:  # ORT refusing the inputs: the model is not what it claims
        raise ModelError(f"{directory}: the model does not score its golden batch: {exc}") from None
    golden = io.BytesIO()
    np.savez_compressed(golden, inputs=golden_inputs, outputs=expected)
    index, body = pack_files({**files, GOLDEN: golden.getvalue()})
    manifest = {
        "release_format": RELEASE_FORMAT,
        "name": model["name"],
        "version": model["version"],
        "created_ms": time.time_ns() // 1_000_000,
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "format": model["format"],
        "bits": model.get("bits", 32),
        "input_spec": _input_spec(model),
        "metrics": model.get("metrics", {}),
        "parent_version": model.get("parent_version"),
        "replaces": replaces,
        "files": index,
        "chunks": max(1, -(-len(body) // chunk_bytes)),
        "chunk_bytes": chunk_bytes,
        "golden": {"rows": len(golden_inputs), "tolerance": GOLDEN_TOLERANCE},
        "model": model,
    }
    manifest["signature"] = signature(manifest, key)
    return Release(manifest, body)


def release_messages(release: Release) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """The records of a release, in publishing order: ``(key, value, headers)``."""
    m = release.manifest
    version = m["version"].encode()
    out = [
        (
            m["name"],
            json.dumps(m, sort_keys=True).encode(),
            [(HEADER_RELEASE, version), (HEADER_PART, b"manifest")],
        )
    ]
    step = m["chunk_bytes"]
    for i in range(m["chunks"]):
        chunk = release.payload[i * step : (i + 1) * step]
        out.append((m["name"], chunk, [(HEADER_RELEASE, version), (HEADER_PART, str(i).encode())]))
    return out


@dataclass(frozen=True)
class Refusal:
    name: str
    version: str
    reason: str
    offset: int


@dataclass
class _Pending:
    manifest: dict
    offset: int
    started_s: float
    chunks: dict[int, bytes] = field(default_factory=dict)


def _headers(raw: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    out = {}
    for name, value in raw or ():
        try:
            out[name] = (value or b"").decode()
        except UnicodeDecodeError:
            out[name] = ""
    return out


class Assembler:
    """Turns the records of ``vigil.models``, in topic order, into verified releases and
    refusals. ``names``: the models this reader serves (others are skipped unread)."""

    def __init__(self, key: bytes, names: set[str] | None = None, timeout_s: float = 30.0):
        self.key, self.names, self.timeout_s = key, names, timeout_s
        self.pending: dict[str, _Pending] = {}
        self.ignored: set[tuple[str, str]] = set()  # refused releases: their chunks are skipped

    def add(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]] | None,
        offset: int,
        ts_ms: int = 0,
        now_s: float | None = None,
    ) -> list[Release | Refusal]:
        name = (key or b"").decode(errors="replace")
        if self.names is not None and name not in self.names:
            return []
        h = _headers(headers)
        version, part = h.get(HEADER_RELEASE, "?"), h.get(HEADER_PART)
        now_s = time.monotonic() if now_s is None else now_s
        if part == "manifest":
            return self._manifest(name, version, value or b"", offset, now_s)
        if (name, version) in self.ignored:
            return []
        pending = self.pending.get(name)
        if pending is None or pending.manifest["version"] != version:
            self.ignored.add((name, version))
            return [Refusal(name, version, f"chunk {part} without its manifest", offset)]
        try:
            index = int(part or "")
        except ValueError:
            index = -1
        if not 0 <= index < pending.manifest["chunks"]:
            del self.pending[name]
            self.ignored.add((name, version))
            return [Refusal(name, version, f"record with part {part!r} is not a chunk", offset)]
        pending.chunks[index] = value or b""
        if len(pending.chunks) < pending.manifest["chunks"]:
            return []
        del self.pending[name]
        try:
            return [self._verify(pending, ts_ms)]
        except ReleaseError as exc:
            return [Refusal(name, version, str(exc), pending.offset)]

    def _manifest(
        self, name: str, version: str, value: bytes, offset: int, now_s: float
    ) -> list[Release | Refusal]:
        out: list[Release | Refusal] = []
        before = self.pending.pop(name, None)
        if before is not None:  # the publisher moved on: that one will never complete
            out.append(self._truncated(before))
        try:
            if len(value) > MAX_MANIFEST_BYTES:
                raise ReleaseError(f"manifest is {len(value)} bytes, at most {MAX_MANIFEST_BYTES}")
            manifest = json.loads(value)  # too deep a nesting: RecursionError, refused
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
            given = str(manifest.get("signature", ""))
            if not hmac.compare_digest(given, signature(manifest, self.key)):
                raise ReleaseError("bad signature (tampered, or signed with another key)")
            for k in ("name", "version", "sha256", "size", "chunks", "files", "format", "model"):
                if k not in manifest:
                    raise ReleaseError(f"manifest lacks {k!r}")
            if manifest["name"] != name or manifest["version"] != version:
                raise ReleaseError("manifest does not match its record's key and headers")
            if int(manifest["chunks"]) < 1:
                raise ReleaseError("manifest announces no chunks")
        except (ValueError, RecursionError, ReleaseError) as exc:
            self.ignored.add((name, version))
            reason = str(exc) if isinstance(exc, ReleaseError) else f"unreadable manifest: {exc}"
            out.append(Refusal(name, version, reason, offset))
            return out
        self.ignored.discard((name, version))  # a republished release (rollback) is new
        self.pending[name] = _Pending(manifest, offset, now_s)
        return out

    def _truncated(self, pending: _Pending) -> Refusal:
        m = pending.manifest
        self.ignored.add((m["name"], m["version"]))
        return Refusal(
            m["name"],
            m["version"],
            f"truncated: {len(pending.chunks)} of {m['chunks']} chunks arrived",
            pending.offset,
        )

    def expire(self, now_s: float | None = None) -> list[Refusal]:
        """Refuse releases still incomplete ``timeout_s`` after their manifest."""
        now_s = time.monotonic() if now_s is None else now_s
        late = [n for n, p in self.pending.items() if now_s - p.started_s > self.timeout_s]
        return [self._truncated(self.pending.pop(n)) for n in late]

    def _verify(self, pending: _Pending, ts_ms: int) -> Release:
        m = pending.manifest
        payload = b"".join(pending.chunks[i] for i in range(m["chunks"]))
        if len(payload) != m["size"]:
            raise ReleaseError(f"payload is {len(payload)} bytes, the manifest says {m['size']}")
        if hashlib.sha256(payload).hexdigest() != m["sha256"]:
            raise ReleaseError("payload sha256 does not match the manifest")
        release = Release(m, payload, ts_ms)
        release.files()  # every file's own hash
        return release


def serve_release(
    release: Release, check_spec: Callable[[dict], None]
) -> HybridScorer | ClipScorer:
    """Load a verified release into ONNX Runtime for serving: the worker's input spec check
    (``check_spec`` raises ReleaseError or ModelError), then parity on the golden batch."""
    m = release.manifest
    try:
        check_spec(m["input_spec"])
        scorer = scorer_for(release.files(), m["model"])
    except ModelError as exc:
        raise ReleaseError(str(exc)) from None
    except Exception as exc:  # ORT refusing the graph: InvalidGraph, Fail, ...
        raise ReleaseError(f"ONNX Runtime cannot load it: {exc}") from None
    try:
        inputs, expected = release.golden()
        got = outputs(scorer, inputs)
        worst = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    except Exception as exc:  # a golden batch that is not an npz of the model's inputs
        raise ReleaseError(f"golden batch unusable: {type(exc).__name__}: {exc}") from None
    tolerance = float(m.get("golden", {}).get("tolerance", GOLDEN_TOLERANCE))
    if not worst <= tolerance:  # NaN fails too
        raise ReleaseError(
            f"parity failed on the golden batch: max diff {worst:.2e} > {tolerance:.0e}"
        )
    return scorer


def describe(release: Release) -> dict[str, Any]:
    """One line of ``vigil models list``."""
    m = release.manifest
    return {
        "name": m["name"],
        "version": m["version"],
        "bits": m.get("bits"),
        "format": m.get("format"),
        "size": m["size"],
        "chunks": m["chunks"],
        "created_ms": m.get("created_ms"),
        "published_ms": release.published_ms,
        "parent_version": m.get("parent_version"),
        "replaces": m.get("replaces"),
        "metrics": m.get("metrics", {}),
    }
