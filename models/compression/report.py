"""``vigil bench quantization``: every export of the served models, measured.

For the risk NN and the inspection classifier (the newest under MODELS) and each bit
width: the export's file size, ONNX Runtime latency at batch 1 and batch 64 on one core,
and its metric against fp32 on held-out data (the export's own verification, through
``vigil export``'s code path, with no loss limit so that every width is measured). The
goals of the compression issue are checked and reported beside the numbers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vigil.models.compression.export import compact_names
from vigil.models.compression.tools import EXPORT_BITS
from vigil.models.kinds import ModelKind, kind

__all__ = ["GOALS", "quantization_report"]

# bits: (at least this many times smaller, at least this many times faster at batch 64,
# at most this many metric points lost); None: measured and reported, no goal
GOALS: dict[int, tuple[float | None, float | None, float | None]] = {
    8: (3.5, 1.5, 0.5),
    4: (6.0, None, 1.0),
}


def _latency_ms(session: Any, feeds: dict[str, np.ndarray], budget_s: float = 1.5) -> float:
    """Median milliseconds per call, after a warm-up call, over about ``budget_s``."""
    session.run(None, feeds)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 500):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def _measure(model: ModelKind, graph: bytes, manifest: dict) -> dict[str, float]:
    from vigil.models.serving import onnx_session

    session = onnx_session(graph, threads=1)
    return {
        "batch1_ms": round(_latency_ms(session, model.latency_feeds(manifest, 1)), 4),
        "batch64_ms": round(_latency_ms(session, model.latency_feeds(manifest, 64)), 3),
    }


def _one_model(
    model: ModelKind, source: Path, bits: tuple[int, ...], say: Callable[[str], None]
) -> dict[str, dict]:
    from vigil.models.serving import read_files, read_manifest

    manifest = read_manifest(source)
    fp32 = read_files(source, manifest)[model.graph]
    rows: dict[str, dict] = {}
    base = {"size_bytes": len(compact_names(fp32)), "file_bytes": len(fp32)}
    rows["32"] = {**base, **_measure(model, fp32, manifest)}
    with tempfile.TemporaryDirectory() as tmp:
        for b in bits:
            say(f"{model.name}: {b}-bit export")
            path, report = model.export(source, b, Path(tmp), float("inf"), say)
            graph = (path / model.graph).read_bytes()
            metric = model.metric
            rows["32"][metric] = report[f"{metric}_fp32"]
            rows[str(b)] = {
                "size_bytes": len(graph),
                "smaller": round(base["size_bytes"] / len(graph), 2),
                **_measure(model, graph, manifest),
                metric: report[f"{metric}_quantized"],
                "loss_points": report["loss_points"],
                "kernels": report["integer_kernels"],
            }
    for b, row in rows.items():
        if b != "32":
            row["faster_batch1"] = round(rows["32"]["batch1_ms"] / row["batch1_ms"], 2)
            row["faster_batch64"] = round(rows["32"]["batch64_ms"] / row["batch64_ms"], 2)
    return rows


def _goals(results: dict[str, dict[str, dict]]) -> list[dict]:
    out = []
    for model, rows in results.items():
        for bits, (smaller, faster, loss) in GOALS.items():
            row = rows.get(str(bits))
            if row is None:
                continue
            checks = {
                "smaller": None if smaller is None else row["smaller"] >= smaller,
                "faster_batch64": None if faster is None else row["faster_batch64"] >= faster,
                "loss_points": None if loss is None else row["loss_points"] <= loss,
            }
            out.append(
                {
                    "model": model,
                    "bits": bits,
                    "goal": {"smaller": smaller, "faster_batch64": faster, "loss_points": loss},
                    "met": {k: v for k, v in checks.items() if v is not None},
                }
            )
    return out


def quantization_report(
    sources: dict[str, Path],
    bits: tuple[int, ...] = EXPORT_BITS,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``sources``: model name (risk, inspection) -> its fp32 model directory."""
    results = {
        kind(name).report_name: _one_model(kind(name), src, bits, say)
        for name, src in sources.items()
    }
    return {
        "models": results,
        "goals": _goals(results),
        "threads": 1,
        "sources": {m: p.name for m, p in sources.items()},
        "note": "size: the ONNX graph with compacted names (fp32 compacted alike: "
        "file_bytes is the fp32 file as trained); latency: median ms per call, one thread",
    }
