"""Model serving: the batched ONNX Runtime scorers the workers hot-swap, and the model files.

A model directory holds ``manifest.json`` plus the files it lists with their sha256. The
risk model (``HybridScorer.FORMAT``) is two ONNX Runtime sessions called once each per
micro-batch: LightGBM's raw margin feeds the hybrid NN graph. Its LightGBM text model is
loaded too, only to explain alerts (per-feature contributions, ``pred_contrib``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vigil.errors import VigilError
from vigil.streams.scorers import BatchScorer, ModelHolder, RulesOnly

__all__ = [
    "DEMO_MANIFEST",
    "is_demo",
    "BatchScorer",
    "ClipScorer",
    "GBDT_OUTPUT",
    "gbdt_margin",
    "HybridScorer",
    "ModelError",
    "ModelHolder",
    "RulesOnly",
    "check_feature_spec",
    "latest_dir",
    "onnx_session",
    "read_files",
    "write_model",
]

MANIFEST = "manifest.json"
# The risk model's LightGBM graph output: rows x 2, column 1 the raw margin (the hybrid's
# ``gbdt_logit`` input), column 0 its negative
GBDT_OUTPUT = "margins"


def gbdt_margin(session: Any, x: np.ndarray) -> np.ndarray:
    """The risk model's tree graph (an ONNX Runtime session) on float32 rows: the raw margin
    per row, contiguous, as the hybrid graph takes it."""
    return np.ascontiguousarray(session.run([GBDT_OUTPUT], {"features": x})[0][:, 1])


class ModelError(VigilError):
    """A model that cannot be served: missing, tampered, or built for other inputs."""


class HybridScorer:
    """The GBDT+NN risk model on ONNX Runtime (one thread, as a worker core runs it)."""

    FORMAT = "onnx:gbdt+nn"

    def __init__(self, gbdt: bytes, hybrid: bytes, booster: bytes, version: str) -> None:
        import lightgbm as lgb

        # log level 3: the tree graph's label output warns on every call
        self.gbdt = onnx_session(gbdt)
        self.hybrid = onnx_session(hybrid)
        self.booster = lgb.Booster(model_str=booster.decode())
        self.version = version

    @classmethod
    def from_bytes(cls, files: dict[str, bytes], version: str) -> HybridScorer:
        try:
            return cls(files["gbdt.onnx"], files["hybrid.onnx"], files["booster.txt"], version)
        except KeyError as exc:
            raise ModelError(f"model {version} lacks the file {exc}") from None

    @classmethod
    def load(cls, directory: Path, expected_spec: str) -> HybridScorer:
        """Load and verify a model directory: manifest, file hashes, feature spec."""
        manifest = read_manifest(directory)
        if manifest.get("format") != cls.FORMAT:
            raise ModelError(f"{directory}: unknown model format {manifest.get('format')!r}")
        check_feature_spec(manifest.get("feature_spec"), expected_spec, f"{directory}: model")
        return cls.from_bytes(read_files(directory, manifest), manifest["version"])

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if not len(x):
            return np.zeros(0, dtype=np.float32)
        margin = gbdt_margin(self.gbdt, x)
        return self.hybrid.run(None, {"features": x, "gbdt_logit": margin})[0]

    def explain(self, features: np.ndarray, names: Sequence[str], top: int = 3) -> list[list]:
        """The GBDT's largest positive feature contributions (log-odds) per row: only for
        alerts, never on the per-event path."""
        contrib = self.booster.predict(
            np.asarray(features, dtype=np.float64), pred_contrib=True, num_threads=1
        )
        out = []
        for row in np.atleast_2d(contrib)[:, :-1]:  # the last column is the bias
            best = np.argsort(-row)[:top]
            out.append([(names[i], float(row[i])) for i in best if row[i] > 0])
        return out


def onnx_session(graph: bytes, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


class ClipScorer:
    """The inspection clip classifier (``format: onnx:clip-classifier``) on ONNX Runtime:
    one call per batch of clips, whatever cameras they come from."""

    FORMAT = "onnx:clip-classifier"

    def __init__(self, graph: bytes, manifest: dict, threads: int = 1) -> None:
        self.session = onnx_session(graph, threads)
        self.version: str = manifest["version"]
        _batch, _channels, self.frames, self.size, _w = manifest["input"]["clip"]
        self.grid: int = manifest["grid"]
        self.threshold: float = float(manifest.get("threshold", 0.5))
        # per camera, from `vigil inspection calibrate` (THRESHOLDS_FILE among its files)
        self.camera_thresholds: dict[str, float] = {}
        self.manifest = manifest

    @classmethod
    def from_bytes(cls, files: dict[str, bytes], manifest: dict, threads: int = 1) -> ClipScorer:
        if "clip.onnx" not in files:
            raise ModelError(f"model {manifest['version']} lacks clip.onnx")
        scorer = cls(files["clip.onnx"], manifest, threads)
        if THRESHOLDS_FILE in files:
            scorer.camera_thresholds = read_camera_thresholds(files[THRESHOLDS_FILE])
        return scorer

    @classmethod
    def load(cls, directory: Path, threads: int = 1) -> ClipScorer:
        manifest = read_manifest(directory)
        if manifest.get("format") != cls.FORMAT:
            raise ModelError(f"{directory}: not a clip classifier ({manifest.get('format')!r})")
        return cls.from_bytes(read_files(directory, manifest), manifest, threads)

    def score(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 1, T, H, W) clips in [0, 1] -> defect probability (B,), location cell (B,)."""
        logit, where = self.session.run(None, {"clip": np.ascontiguousarray(clips, np.float32)})
        return 1.0 / (1.0 + np.exp(-logit.astype(np.float64))), where.argmax(1)


THRESHOLDS_FILE = "thresholds.json"  # an inspection model's per-camera alert thresholds


def read_camera_thresholds(data: bytes) -> dict[str, float]:
    """``{"cameras": {camera id: threshold}, ...}`` (``THRESHOLDS_FILE``): each a number in
    (0, 1]; ModelError otherwise."""
    try:
        cameras = json.loads(data)["cameras"]
        out = {str(k): float(v) for k, v in cameras.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{THRESHOLDS_FILE}: not a table of camera thresholds ({exc})") from None
    bad = {k: v for k, v in out.items() if not 0 < v <= 1}
    if bad:
        raise ModelError(f"{THRESHOLDS_FILE}: thresholds outside (0, 1]: {bad}")
    return out


def check_feature_spec(found: str | None, expected: str, what: str = "model") -> None:
    """ModelError unless a risk model was built for the feature spec this code computes:
    one check for model directories, releases, publishing and the refresh job."""
    if found != expected:
        raise ModelError(
            f"{what} was trained on feature spec {found!r}, this worker computes "
            f"{expected!r}; retrain it (vigil train risk)"
        )


def read_files(directory: Path, manifest: dict) -> dict[str, bytes]:
    """The files a manifest lists, each checked against its sha256."""
    files = {}
    for name, digest in manifest["files"].items():
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ModelError(f"{path}: sha256 does not match the manifest (changed or torn)")
        files[name] = data
    return files


def read_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory}: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}/{MANIFEST}: unreadable ({exc})") from None
    for key in ("name", "version", "format", "files", "created_ms"):
        if key not in manifest:
            raise ModelError(f"{directory}/{MANIFEST}: no {key!r}")
    return manifest


DEMO_MANIFEST = {
    "demo": True,
    "purpose": "a demo model: trained by `vigil demo` in seconds on generated data; workers "
    "serve it only with VIGIL_SERVE_DEMO_MODELS=true",
}


def is_demo(manifest: dict) -> bool:
    """Whether a model manifest is a demo model's (``DEMO_MANIFEST``)."""
    return manifest.get("demo") is True


def write_model(out_dir: Path, files: dict[str, bytes], manifest: dict) -> Path:
    """Write a model directory atomically (a temporary directory renamed into place); the
    version is derived from the content, so the same model always has the same version."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    content = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:12]
    # a demo model says so wherever its version is shown (scores, alerts, logs, releases)
    version = f"{manifest['name']}-{'demo-' if is_demo(manifest) else ''}{content}"
    manifest = {**manifest, "version": version, "created_ms": time.time_ns() // 1_000_000}
    manifest["files"] = digests
    target = Path(out_dir) / version
    if (target / MANIFEST).exists():
        return target  # the same model is already there
    tmp = Path(out_dir) / f".{version}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, target)
    return target


def latest_dir(models_dir: Path, name: str) -> Path | None:
    """The newest model directory (by ``created_ms``) named ``name`` right under
    ``models_dir``; None when there is none."""
    root = Path(models_dir)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).exists():
            manifest = read_manifest(d)
            if manifest.get("name") == name:  # other models may share the directory
                found.append((manifest["created_ms"], d))
    return max(found)[1] if found else None
