"""The kinds of model Vigil trains and serves, each answering for itself: where its models
live, what its manifest must hold, which inputs it takes, how a release proves itself
(the golden batch), how it is scored on held-out data and quantized.

Serving, the release registry, the refresh job, the compression report and the CLI ask a
:class:`ModelKind` (``kind("risk")``, ``kind_of(manifest)``) instead of comparing model
names or formats themselves.

>>> [k.name for k in KINDS.values()]
['risk', 'inspection']
>>> kind_of({"format": "onnx:clip-classifier"}).metric
'auroc'
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vigil.errors import UsageError
from vigil.models.serving import (
    ClipScorer,
    HybridScorer,
    ModelError,
    check_feature_spec,
    latest_dir,
    read_files,
    read_manifest,
)

__all__ = ["INSPECTION", "KINDS", "RISK", "ModelKind", "kind", "kind_of", "scorer_for"]

Say = Callable[[str], object]
Scorer = HybridScorer | ClipScorer


class ModelKind:
    """One kind of model. Subclasses fill in the class attributes and the methods."""

    name: str  # the manifest's ``name``, the release key on vigil.models, the CLI's word
    format: str  # the manifest's ``format``
    subdir: str  # where ``vigil train NAME`` writes, under the models directory
    metric: str  # the held-out metric the refresh job and exports compare
    golden_rows: int  # inputs in a release's golden batch
    graph: str  # the ONNX file the compression report measures
    report_name: str  # its row in the compression report

    def directory(self, models_path: Path) -> Path:
        return Path(models_path) / self.subdir if self.subdir else Path(models_path)

    def latest(self, models_path: Path) -> Path | None:
        """The newest model of this kind where ``vigil train`` writes it; None if none."""
        return latest_dir(self.directory(models_path), self.name)

    def exports(self, models_path: Path) -> Path:
        """Where ``vigil export`` writes this kind's quantized models."""
        out = Path(models_path) / "exports"
        return out / self.subdir if self.subdir else out

    def check(self, manifest: dict, what: str) -> None:
        """ModelError unless this code can serve the model ``manifest`` describes."""

    def load(self, directory: Path) -> Scorer:
        """A verified model directory as a serving scorer."""
        manifest = read_manifest(directory)
        if manifest.get("format") != self.format:
            raise ModelError(
                f"{directory}: not a {self.name} model: format {manifest.get('format')!r}"
            )
        self.check(manifest, f"{directory}: model")
        return self.scorer(read_files(directory, manifest), manifest)

    def load_latest(self, models_path: Path) -> Scorer | None:
        found = self.latest(models_path)
        return None if found is None else self.load(found)

    def scorer(self, files: dict[str, bytes], manifest: dict) -> Scorer:
        raise NotImplementedError

    def input_spec(self, manifest: dict) -> dict:
        """What a release declares it takes (checked by workers before anything loads)."""
        raise NotImplementedError

    def golden_inputs(self, manifest: dict, rows: int, seed: int = 11) -> np.ndarray:
        """A deterministic parity batch of realistic inputs (random ones would saturate a
        model's outputs, and two different models would then agree)."""
        raise NotImplementedError

    def outputs(self, scorer: Scorer, inputs: np.ndarray) -> np.ndarray:
        """What release parity compares: one probability per input."""
        raise NotImplementedError

    def score(self, scorer: Scorer, data: Any) -> float:
        """The held-out metric (``self.metric``) of ``scorer`` on a labelled data set."""
        raise NotImplementedError

    def export(
        self,
        source: Path,
        bits: int,
        out_dir: Path,
        max_loss: float | None,
        say: Say,
        verify_days: int = 6,
    ) -> tuple[Path, dict]:
        """Quantize the model in ``source`` to ``bits``, verified against fp32 on held-out
        data (``verify_days``: days of generated history, for kinds verified on it)."""
        raise NotImplementedError

    def latency_feeds(self, manifest: dict, batch: int) -> dict[str, np.ndarray]:
        """Inputs of ``graph`` for timing one call at ``batch`` (the compression report)."""
        raise NotImplementedError


class RiskKind(ModelKind):
    """The GBDT + NN hybrid (``models.risk``): feature rows in, a probability out."""

    name, format, subdir, metric = "risk", HybridScorer.FORMAT, "", "auc_pr"
    golden_rows, graph, report_name = 256, "hybrid.onnx", "risk_nn"

    def check(self, manifest: dict, what: str) -> None:
        from vigil.streams.features import FEATURE_SPEC

        check_feature_spec(manifest.get("feature_spec"), FEATURE_SPEC.label, what)

    def scorer(self, files: dict[str, bytes], manifest: dict) -> Scorer:
        return HybridScorer.from_bytes(files, manifest["version"])

    def input_spec(self, manifest: dict) -> dict:
        from vigil.streams.features import FEATURE_SPEC

        return {
            "features": [None, len(FEATURE_SPEC.names)],
            "feature_spec": manifest["feature_spec"],
        }

    def golden_inputs(self, manifest: dict, rows: int, seed: int = 11) -> np.ndarray:
        from vigil.models.risk import history_from_generator

        history = history_from_generator(days=2, seed=seed, accounts=60)  # half positive
        positive = np.flatnonzero(history.labels == 1)[: rows // 2]
        negative = np.flatnonzero(history.labels == 0)[: rows - len(positive)]
        return history.features[np.concatenate([positive, negative])].astype(np.float32)

    def outputs(self, scorer: Scorer, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(scorer.score_batch(inputs), dtype=np.float64)  # type: ignore[union-attr]

    def score(self, scorer: Scorer, data: Any) -> float:
        from vigil.models.metrics import average_precision

        return average_precision(data.labels, self.outputs(scorer, data.features))

    def export(
        self,
        source: Path,
        bits: int,
        out_dir: Path,
        max_loss: float | None,
        say: Say,
        verify_days: int = 6,
    ) -> tuple[Path, dict]:
        from vigil.models.risk import history_from_generator, temporal_split
        from vigil.models.risk.quantize import quantize_risk

        say(f"generating {verify_days} days of labelled history for calibration and verification")
        history = history_from_generator(days=verify_days, seed=4242)
        fit, held = temporal_split(history, verify_days / 2)  # fit first, verify on later days
        return quantize_risk(
            source, bits, out_dir, fit, held, verify_days / 4, max_loss=max_loss, say=say
        )

    def latency_feeds(self, manifest: dict, batch: int) -> dict[str, np.ndarray]:
        from vigil.streams.features import FEATURE_SPEC

        rng = np.random.default_rng(batch)
        x = rng.lognormal(0, 1.5, (batch, len(FEATURE_SPEC.names))).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = np.nan
        return {"features": x, "gbdt_logit": rng.normal(-4, 3, batch).astype(np.float32)}


class InspectionKind(ModelKind):
    """The 3D-CNN + Transformer clip classifier (``models.inspection``): clips in, a defect
    probability and a location cell out."""

    name, format, subdir, metric = "inspection", ClipScorer.FORMAT, "inspection", "auroc"
    golden_rows, graph, report_name = 4, "clip.onnx", "inspection"

    def scorer(self, files: dict[str, bytes], manifest: dict) -> Scorer:
        return ClipScorer.from_bytes(files, manifest)

    def input_spec(self, manifest: dict) -> dict:
        return {"clip": manifest["input"]["clip"]}

    def golden_inputs(self, manifest: dict, rows: int, seed: int = 11) -> np.ndarray:
        from vigil.models.inspection import VideoConfig, make_clips
        from vigil.streams.sources.camera import TRAIN_TEXTURES

        cfg = VideoConfig(**manifest["config"])  # clips in the model's own input size
        return make_clips(rows, cfg, TRAIN_TEXTURES, seed=seed).clips.astype(np.float16)

    def outputs(self, scorer: Scorer, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(scorer.score(inputs)[0], dtype=np.float64)  # type: ignore[union-attr]

    def score(self, scorer: Scorer, data: Any) -> float:
        from vigil.models.inspection import auroc

        clips = data.clips
        probs = np.concatenate(
            [self.outputs(scorer, clips[i : i + 64]) for i in range(0, len(clips), 64)]
        )
        return auroc(data.labels, probs)

    def export(
        self,
        source: Path,
        bits: int,
        out_dir: Path,
        max_loss: float | None,
        say: Say,
        verify_days: int = 6,
    ) -> tuple[Path, dict]:
        from vigil.models.inspection import VideoConfig, make_clips, training_clips
        from vigil.models.inspection.quantize import quantize_inspection
        from vigil.streams.sources.camera import HELDOUT_TEXTURES

        cfg = VideoConfig(**read_manifest(source)["config"])
        # calibration (8 bits) or fine-tuning (4, 2) on the training textures
        tune = None
        if bits != 16:
            tune = training_clips(256 if bits == 8 else 800, cfg, seed=7000 if bits == 8 else 7100)
        held = make_clips(400, cfg, HELDOUT_TEXTURES, seed=8000)  # textures it never saw
        return quantize_inspection(source, bits, out_dir, tune, held, max_loss=max_loss, say=say)

    def latency_feeds(self, manifest: dict, batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch)
        _b, c, t, h, w = manifest["input"]["clip"]
        return {"clip": rng.random((batch, c, t, h, w), dtype=np.float32)}


RISK, INSPECTION = RiskKind(), InspectionKind()
KINDS: dict[str, ModelKind] = {k.name: k for k in (RISK, INSPECTION)}


def kind(name: str) -> ModelKind:
    """The kind called ``name``; a UsageError naming the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}: one of {', '.join(KINDS)}") from None


def kind_of(manifest: dict) -> ModelKind:
    """The kind of the model a manifest describes, by its format."""
    for k in KINDS.values():
        if manifest.get("format") == k.format:
            return k
    raise ModelError(f"model {manifest.get('version')}: unknown format {manifest.get('format')!r}")


def scorer_for(files: dict[str, bytes], manifest: dict) -> Scorer:
    """The serving scorer of a model's files, by its manifest's format."""
    return kind_of(manifest).scorer(files, manifest)
