"""Model releases on ``vigil.models``: a model directory as a signed, chunked release.

Wire format (one partition, key = the model name, in this order):

1. the **manifest**, JSON: ``name, version, created_ms, sha256, size, format, bits,
   input_spec, metrics, parent_version`` (DESIGN.md), plus ``files`` (``name: [offset,
   size, sha256]`` inside the payload), ``chunks``, ``chunk_bytes``, ``golden`` (the
   parity batch's tolerance), ``model`` (the directory's own manifest), ``release_format``
   and ``signature``. Headers: ``vigil-release: <version>``, ``vigil-part: manifest``.
2. ``chunks`` records of the **payload**: the files concatenated in manifest order, the
   golden batch (``golden.npz``) last. Headers: ``vigil-release``, ``vigil-part: <index>``.

``signature`` is Ed25519 (``models.signing``: ``{"alg", "key_id", "value"}``) over the
manifest's canonical JSON without it (sorted keys, no spaces); the manifest holds the
payload's sha256 and each chunk's, so the signature covers every byte. Only publishers
hold the private key; workers hold public keys. The golden batch holds inputs and the
outputs the publisher's ONNX Runtime computed: a worker serves a release only if it
reproduces them.

Replay and downgrade: a manifest carries ``sequence`` (the publisher's clock in ms when it
signed), and a reader refuses a release of a model whose sequence is not above the highest
it has accepted for that model, so an old release appended again, byte for byte, is
refused. A rollback is a new signed manifest (a new sequence, ``rollback: true``) over the
older version's payload.

A reader (``Assembler``) takes the topic in order. Before anything is assembled it checks
the manifest's size, its signature, its sequence and the release's announced size and
chunk count (``Limits``). A record that fails those is refused alone: it does not displace
a release whose chunks are still arriving, and a chunk whose hash is not the manifest's is
skipped, so records injected between a release's own cannot spoil it. A release is then
refused when a chunk is missing (a newer valid manifest of the same model came first, or it
stayed incomplete past the timeout), its input spec is not the worker's, or parity fails.

Migration from release format 1 (HMAC-SHA256 with ``VIGIL_HMAC_KEY``): such releases are
refused ("not an ed25519 signature"); generate a key pair (``vigil keys generate``), give
the private key to the publishers and the public key to the workers, and publish the
serving models again (``vigil models publish``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vigil.errors import VigilError
from vigil.models.kinds import Scorer, kind_of
from vigil.models.serving import ModelError, is_demo, read_files, read_manifest
from vigil.models.signing import SignatureError, SigningKey, TrustedKeys

__all__ = [
    "CHUNK_BYTES",
    "Assembler",
    "Limits",
    "Refusal",
    "Release",
    "ReleaseError",
    "build_release",
    "check_onnx",
    "chunk_index",
    "pack_files",
    "release_messages",
    "resign",
    "serve_release",
    "sign_manifest",
]

CHUNK_BYTES = 256 * 1024  # well under Kafka's default 1 MB message limit
MAX_MANIFEST_BYTES = 256 * 1024  # read before anything is parsed (real ones: a few KB)
RELEASE_FORMAT = 2  # 1: HMAC-signed, no sequence (refused)
GOLDEN = "golden.npz"
# the outputs are probabilities; the same graph on another ORT build or CPU may differ in
# the last float32 bits, never by this much
GOLDEN_TOLERANCE = 1e-4
HEADER_RELEASE, HEADER_PART = "vigil-release", "vigil-part"


class ReleaseError(VigilError):
    """A release that must not serve: the reason is logged and counted by the worker."""


@dataclass(frozen=True)
class Limits:
    """What a reader accepts before it assembles anything (a release is held in memory
    until verified, and ONNX Runtime needs several times its size to load it)."""

    release_bytes: int = 256 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024


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


def canonical(manifest: dict) -> bytes:
    """What a release signature is over: the manifest without it, sorted, no spaces."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_manifest(manifest: dict, signer: SigningKey) -> dict:
    """``manifest`` with its ``signature``."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return {**body, "signature": signer.sign(canonical(body))}


def resign(release: Release, signer: SigningKey, **changes: Any) -> Release:
    """The same payload under a new manifest (fields changed, a new sequence unless given),
    signed by ``signer``: how a rollback republishes an older version."""
    manifest = {**release.manifest, "sequence": _sequence(), **changes}
    return Release(sign_manifest(manifest, signer), release.payload)


_last_sequence = 0


def _sequence() -> int:
    """The publisher's clock in ms, strictly increasing within a process."""
    global _last_sequence
    _last_sequence = max(time.time_ns() // 1_000_000, _last_sequence + 1)
    return _last_sequence


def chunk_index(payload: bytes, chunk_bytes: int) -> dict[str, Any]:
    """The manifest fields that cut ``payload`` into chunks: count, size and each hash."""
    chunks = max(1, -(-len(payload) // chunk_bytes))
    return {
        "chunks": chunks,
        "chunk_bytes": chunk_bytes,
        "chunk_sha256": [
            hashlib.sha256(payload[i * chunk_bytes : (i + 1) * chunk_bytes]).hexdigest()
            for i in range(chunks)
        ],
    }


def _as_input(x: np.ndarray) -> np.ndarray:
    # clips travel as float16 (or grey levels: k/255), features as float32; both sides
    # score exactly these values
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def build_release(
    directory: Path,
    signer: SigningKey,
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
    model_kind = kind_of(model)
    model_kind.check(model, f"{directory}: model {model['version']}")
    scorer = model_kind.scorer(files, model)
    if golden_inputs is None:
        golden_inputs = model_kind.golden_inputs(model, model_kind.golden_rows)
    try:
        expected = model_kind.outputs(scorer, _as_input(golden_inputs))
    except Exception as exc:  # ORT refusing the inputs: the model is not what it claims
        raise ModelError(f"{directory}: the model does not score its golden batch: {exc}") from None
    golden = io.BytesIO()
    np.savez_compressed(golden, inputs=golden_inputs, outputs=expected)
    index, body = pack_files({**files, GOLDEN: golden.getvalue()})
    created_ms = _sequence()
    manifest = {
        "release_format": RELEASE_FORMAT,
        "name": model["name"],
        "version": model["version"],
        "created_ms": created_ms,
        "sequence": created_ms,
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "format": model["format"],
        "bits": model.get("bits", 32),
        "input_spec": model_kind.input_spec(model),
        "metrics": model.get("metrics", {}),
        "parent_version": model.get("parent_version"),
        "replaces": replaces,
        "files": index,
        **chunk_index(body, chunk_bytes),
        "golden": {"rows": len(golden_inputs), "tolerance": GOLDEN_TOLERANCE},
        "model": model,
    }
    return Release(sign_manifest(manifest, signer), body)


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

    def __init__(
        self,
        trusted: TrustedKeys,
        names: set[str] | None = None,
        timeout_s: float = 30.0,
        limits: Limits | None = None,
    ):
        self.trusted, self.names, self.timeout_s = trusted, names, timeout_s
        self.limits = limits or Limits()
        self.pending: dict[str, _Pending] = {}
        self.ignored: set[tuple[str, str]] = set()  # refused releases: their chunks are skipped
        self.sequence: dict[str, int] = {}  # model -> highest sequence accepted
        self.skipped = 0  # records skipped: chunks that are not the manifest's

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
        pending = self.pending.get(name)
        if pending is None or pending.manifest["version"] != version:
            if (name, version) in self.ignored:
                return []  # of a refused release
            self.ignored.add((name, version))
            return [Refusal(name, version, f"chunk {part} without its manifest", offset)]
        try:
            index = int(part or "")
        except ValueError:
            index = -1
        m = pending.manifest
        data = value or b""
        if (
            not 0 <= index < m["chunks"]
            or hashlib.sha256(data).hexdigest() != (m["chunk_sha256"][index])
        ):
            self.skipped += 1  # not this release's: injected, or a stray copy
            return []
        pending.chunks[index] = data
        if len(pending.chunks) < m["chunks"]:
            return []
        del self.pending[name]
        try:
            release = self._verify(pending, ts_ms)
        except ReleaseError as exc:
            return [Refusal(name, version, str(exc), pending.offset)]
        self.sequence[name] = max(self.sequence.get(name, 0), m["sequence"])
        return [release]

    def _manifest(
        self, name: str, version: str, value: bytes, offset: int, now_s: float
    ) -> list[Release | Refusal]:
        try:
            manifest = self._checked(name, version, value)
        except (ValueError, RecursionError, ReleaseError, SignatureError) as exc:
            # refused alone: a release whose chunks are arriving is not displaced by it
            known = isinstance(exc, ReleaseError | SignatureError)
            reason = str(exc) if known else f"unreadable manifest: {exc}"
            self.ignored.add((name, version))  # its chunks are skipped unread
            return [Refusal(name, version, reason, offset)]
        out: list[Release | Refusal] = []
        before = self.pending.pop(name, None)
        if before is not None:  # the publisher moved on: that one will never complete
            out.append(self._truncated(before))
        self.ignored.discard((name, version))  # a rollback republishes a version
        self.pending[name] = _Pending(manifest, offset, now_s)
        return out

    def _checked(self, name: str, version: str, value: bytes) -> dict:
        """The manifest, if it is signed by a trusted key, newer than anything accepted
        for this model and within the limits; else ReleaseError or SignatureError."""
        if len(value) > MAX_MANIFEST_BYTES:
            raise ReleaseError(f"manifest is {len(value)} bytes, at most {MAX_MANIFEST_BYTES}")
        manifest = json.loads(value)  # too deep a nesting: RecursionError, refused
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        self.trusted.verify(canonical(manifest), manifest.get("signature"))
        for k in (
            "name", "version", "sequence", "sha256", "size", "chunks", "chunk_bytes",
            "chunk_sha256", "files", "format", "model",
        ):  # fmt: skip
            if k not in manifest:
                raise ReleaseError(f"manifest lacks {k!r}")
        if manifest["name"] != name or manifest["version"] != version:
            raise ReleaseError("manifest does not match its record's key and headers")
        sequence = manifest["sequence"]
        highest = self._highest(name)
        if not isinstance(sequence, int) or sequence <= highest:
            raise ReleaseError(
                f"replayed or older release: sequence {sequence}, this reader is at {highest} "
                "(to serve an older version, roll back: a new signed release of it)"
            )
        size, chunks, chunk_bytes = manifest["size"], manifest["chunks"], manifest["chunk_bytes"]
        limits = self.limits
        if not all(isinstance(v, int) for v in (size, chunks, chunk_bytes)):
            raise ReleaseError("manifest size, chunks and chunk_bytes must be integers")
        if not 0 < size <= limits.release_bytes:
            raise ReleaseError(f"release is {size} bytes, at most {limits.release_bytes}")
        if not 0 < chunk_bytes <= limits.chunk_bytes or chunks != -(-size // chunk_bytes):
            raise ReleaseError(
                f"{chunks} chunks of {chunk_bytes} bytes cannot hold {size} bytes "
                f"(chunks of at most {limits.chunk_bytes})"
            )
        hashes = manifest["chunk_sha256"]
        if not isinstance(hashes, list) or len(hashes) != chunks:
            raise ReleaseError("manifest needs one chunk_sha256 per chunk")
        return manifest

    def _highest(self, name: str) -> int:
        """The sequence a new manifest of ``name`` must be above: the highest accepted,
        or the release still assembling."""
        pending = self.pending.get(name)
        return max(self.sequence.get(name, 0), pending.manifest["sequence"] if pending else 0)

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


def check_onnx(files: dict[str, bytes], limit_bytes: int) -> None:
    """Before ONNX Runtime sees a release's graphs: each parses, refers to no external data
    (a path on the worker's disk), and its initializers and constants declare at most
    ``limit_bytes`` together (what loading it would allocate for them)."""
    import onnx
    from onnx import TensorProto, helper

    for name, data in files.items():
        if not name.endswith(".onnx"):
            continue
        try:
            graph = onnx.load_model_from_string(data).graph
        except Exception as exc:  # protobuf's DecodeError and kin
            raise ReleaseError(f"{name} is not an ONNX model: {exc}") from None
        tensors = list(graph.initializer)
        for node in graph.node:
            tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        declared = 0
        for t in tensors:
            if t.data_location == TensorProto.EXTERNAL:
                raise ReleaseError(f"{name}: tensor {t.name!r} refers to external data")
            size = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            declared += int(np.prod(t.dims, dtype=np.float64)) * size
        if declared > limit_bytes:
            raise ReleaseError(
                f"{name} declares {declared} bytes of initializers, at most {limit_bytes}"
            )


def serve_release(
    release: Release, check_spec: Callable[[dict], None], limits: Limits | None = None
) -> Scorer:
    """Load a verified release into ONNX Runtime for serving: the worker's input spec check
    (``check_spec`` raises ReleaseError or ModelError), the graphs' declared sizes
    (``check_onnx``), then parity on the golden batch."""
    m = release.manifest
    try:
        check_spec(m["input_spec"])
        check_onnx(release.files(), (limits or Limits()).release_bytes)
        model_kind = kind_of(m["model"])
        scorer = model_kind.scorer(release.files(), m["model"])
    except ReleaseError:
        raise
    except ModelError as exc:
        raise ReleaseError(str(exc)) from None
    except Exception as exc:  # ORT refusing the graph: InvalidGraph, Fail, ...
        raise ReleaseError(f"ONNX Runtime cannot load it: {exc}") from None
    try:
        inputs, expected = release.golden()
        got = model_kind.outputs(scorer, inputs)
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
        "demo": is_demo(m.get("model", {})),
        "metrics": m.get("metrics", {}),
    }
